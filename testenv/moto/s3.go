package moto

import (
	"context"
	"errors"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
)

// S3Client is an S3 client for cfg with path-style addressing, which moto's single
// 127.0.0.1 endpoint needs (a bucket cannot be a host name there).
func S3Client(cfg aws.Config) *s3.Client {
	return s3.NewFromConfig(cfg, func(o *s3.Options) { o.UsePathStyle = true })
}

// CreateBucket creates bucket (in Region), versioned when asked. A bucket that already exists
// and is ours is fine.
func CreateBucket(ctx context.Context, cfg aws.Config, bucket string, versioned bool) error {
	client := S3Client(cfg)
	_, err := client.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(bucket)})
	var owned *types.BucketAlreadyOwnedByYou
	if err != nil && !errors.As(err, &owned) {
		return fmt.Errorf("create bucket %q: %w", bucket, err)
	}
	if versioned {
		if _, err := client.PutBucketVersioning(ctx, &s3.PutBucketVersioningInput{
			Bucket:                  aws.String(bucket),
			VersioningConfiguration: &types.VersioningConfiguration{Status: types.BucketVersioningStatusEnabled},
		}); err != nil {
			return fmt.Errorf("enable versioning on bucket %q: %w", bucket, err)
		}
	}
	return nil
}
