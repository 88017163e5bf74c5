package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/aws/aws-sdk-go-v2/config"
	"k8s.io/client-go/tools/clientcmd"

	"go.klusters.dev/credential-webhook/kube"
	awsp "go.klusters.dev/credential-webhook/providers/aws"
	"go.klusters.dev/credential-webhook/providers/azure"
)

// runRoles is the roles command: the derived roles table, or one of its subcommands (adopt,
// adopt-azure), which take over what the upstream KubeStash credential managers created.
func runRoles(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 {
		switch args[0] {
		case "adopt":
			return runRolesAdopt(ctx, args[1:], stdout, stderr)
		case "adopt-azure":
			return runRolesAdoptAzure(ctx, args[1:], stdout, stderr)
		}
	}
	fs := newFlagSet("roles", "Print the derived IAM roles of a seed role: index, ARN, subjects, characters used of the\ntrust-policy quota, fill, and totals. Read-only. Uses the AWS SDK's standard configuration\n(AWS_REGION, AWS_ENDPOINT_URL, the default credential chain).\n\nSubcommands: 'roles adopt' takes over untagged <seed>-<i> roles that are faithful clones of\nthe seed; 'roles adopt-azure' the unlabelled use-mi-<client ID> ClusterRoles and bindings.", stderr)
	seed := fs.String("seed", "", "seed role ARN (required)")
	quota := fs.Int("aws-trust-policy-quota", 0, "trust policy size quota; 0 reads it from iam:GetAccountSummary")
	limit := fs.Int("role-creation-limit", awsp.DefaultRoleCreationLimit, "the server's --role-creation-limit: the totals line measures the seed against it and warns from "+fmt.Sprintf("%.0f%%", 100*awsp.CeilingWarnFill))
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *limit <= 0 {
		return errors.New("--role-creation-limit must be positive")
	}
	if *seed == "" {
		return errors.New("--seed is required")
	}
	arn, err := awsp.ParseRoleARN(*seed)
	if err != nil {
		return err
	}
	seeds, err := awsp.ParseAllowlist(arn.String())
	if err != nil {
		return err
	}
	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		return err
	}
	a := awsp.NewAssigner(awsp.NewIAMClient(cfg), awsp.NewLocalLocker(), awsp.Config{Seeds: seeds, Quota: *quota}, nil)
	roles, err := a.Roles(ctx, arn)
	if err != nil {
		return err
	}
	awsp.WriteRolesTable(stdout, roles)
	awsp.WriteCeiling(stdout, awsp.CeilingOf(roles, *limit))
	return nil
}

// runRolesAdopt is roles adopt: it judges every untagged <seed>-<i> role against the seed and,
// with --apply, tags the faithful ones. It runs with an administrator's AWS credentials: the
// webhook's own IAM policy allows TagRole only on roles that already carry the seed tag.
func runRolesAdopt(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("roles adopt", `Take over the roles named <seed>-<i> under the seed's path that carry no seed tag (made by
KubeStash's aws-credential-manager, say). Each is compared with the seed: the same managed and
inline policies, the permissions boundary derived roles get, the same max session duration, and
the seed's trust statements but for the ServiceAccounts listed, which must all be
system:serviceaccount:<namespace>:<name> subjects under StringEquals or StringLike. A faithful
clone is tagged as this server's derived roles are (the seed tag and the seed's tags); any other
is REFUSED with the differences and left alone. Policies are never changed: once a role is ours,
garbage collection's drift repair keeps it in line with the seed.

Default: a dry run that prints the table and writes nothing. --apply tags. Exits non-zero when a
role was refused or could not be tagged.

Run it with an administrator's credentials (iam:ListRoles, GetRole, ListAttachedRolePolicies,
ListRolePolicies, GetRolePolicy, TagRole; PutRolePermissionsBoundary with --put-boundary), not the
webhook's: the webhook's IAM policy allows TagRole only on roles that already carry the seed tag,
so its credentials can never adopt a role. Stop the upstream manager first. Uses the AWS SDK's
standard configuration (AWS_REGION, AWS_ENDPOINT_URL, the default credential chain).`, stderr)
	seed := fs.String("seed", "", "seed role ARN (required)")
	role := fs.String("role", "", "adopt only this role (name or ARN; it must be named <seed>-<i> under the seed's path)")
	apply := fs.Bool("apply", false, "tag the faithful roles; without it nothing is written")
	putBoundary := fs.Bool("put-boundary", false, "set the permissions boundary on a faithful role that has none, before tagging it (one with another boundary is refused)")
	boundary := fs.String("aws-permissions-boundary", "", "as for serve: the boundary derived roles carry; empty: the seed's own")
	issuer := fs.String("aws-oidc-issuer", "", "as for serve: this cluster's OIDC issuer URL, which pins the trust statements that carry subjects")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *seed == "" {
		return errors.New("--seed is required")
	}
	arn, err := awsp.ParseRoleARN(*seed)
	if err != nil {
		return err
	}
	seeds, err := awsp.ParseAllowlist(arn.String())
	if err != nil {
		return err
	}
	if *boundary != "" {
		if _, err := awsp.ParsePolicyARN(*boundary); err != nil {
			return fmt.Errorf("--aws-permissions-boundary: %w", err)
		}
	}
	iss, err := awsp.NormalizeIssuer(*issuer)
	if err != nil {
		return fmt.Errorf("--aws-oidc-issuer: %w", err)
	}
	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		return err
	}
	a := awsp.NewAssigner(awsp.NewIAMClient(cfg), awsp.NewLocalLocker(), awsp.Config{Seeds: seeds, PermissionsBoundary: *boundary, OIDCIssuer: iss}, nil)
	results, err := a.Adopt(ctx, arn, awsp.AdoptOptions{Role: *role, Apply: *apply, PutBoundary: *putBoundary})
	if err != nil {
		return err
	}
	awsp.WriteAdoptTable(stdout, results)
	sum := adoptSummary{what: "roles", write: "tag the faithful roles", object: "a role", apply: *apply}
	for _, r := range results {
		sum.count(string(r.Verdict), r.Failed(), string(awsp.AdoptFaithful), string(awsp.AdoptAdopted), string(awsp.AdoptOurs), string(awsp.AdoptRefused))
	}
	return sum.report(stdout)
}

// runRolesAdoptAzure is roles adopt-azure: the same for the use-mi-<client ID> ClusterRoles and
// ClusterRoleBindings, labelled with an administrator's kubeconfig.
func runRolesAdoptAzure(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("roles adopt-azure", `Take over the ClusterRoles and ClusterRoleBindings named use-mi-<client ID> that carry no
credential-webhook.klusters.dev/managed label (made by KubeStash's azure-credential-manager, say).
Faithful: the ClusterRole holds exactly the one rule (verb use-managed-identity on resource
<client ID> of API group cid.wi.aks.azure.com; no aggregation, no aggregate-to-* label), the
binding refers to the ClusterRole of the same name, and every subject is a ServiceAccount. A
faithful pair is labelled as this server's own are; any other is REFUSED with the reasons and
left alone. Nothing but the label is changed.

Default: a dry run. --apply labels. Exits non-zero when an object was refused or could not be
labelled.

Run it as a cluster administrator (list and patch on clusterroles and clusterrolebindings), not
as the webhook: the webhook's RBAC cannot update ClusterRoles, and its self policy
(selfPolicy.enabled) refuses it any change of a binding's labels. That policy binds only the
webhook's own username, so it does not apply to this command.`, stderr)
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig file; empty: $KUBECONFIG or ~/.kube/config, as kubectl")
	kubeContext := fs.String("context", "", "kubeconfig context; empty: the current one")
	clientID := fs.String("client-id", "", "adopt only use-mi-<this client ID>")
	apply := fs.Bool("apply", false, "label the faithful objects; without it nothing is written")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = *kubeconfig
	restCfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: *kubeContext}).ClientConfig()
	if err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}
	restCfg.UserAgent = "credential-webhook/" + version
	cs, err := kube.NewClient(restCfg)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	results, err := azure.Adopt(ctx, cs, azure.AdoptOptions{ClientID: *clientID, Apply: *apply})
	if err != nil {
		return err
	}
	azure.WriteAdoptTable(stdout, results)
	sum := adoptSummary{what: "identities", write: "label the faithful objects", object: "a binding", apply: *apply}
	for _, r := range results {
		sum.count(string(r.Verdict), r.Failed(), string(azure.AdoptFaithful), string(azure.AdoptAdopted), string(azure.AdoptOurs), string(azure.AdoptRefused))
	}
	return sum.report(stdout)
}

// adoptSummary is the closing summary both adopt commands print, and their exit status.
type adoptSummary struct {
	what, write, object                                     string
	apply                                                   bool
	n, faithful, adopted, ours, refused, failed, notAdopted int
}

// count adds one result; the verdict names are the cloud's own.
func (s *adoptSummary) count(verdict string, failed bool, faithful, adopted, ours, refused string) {
	s.n++
	switch verdict {
	case faithful:
		s.faithful++
	case adopted:
		s.adopted++
	case ours:
		s.ours++
	case refused:
		s.refused++
	default:
		s.failed++
	}
	if failed {
		s.notAdopted++
	}
}

func (s *adoptSummary) report(w io.Writer) error {
	fmt.Fprintf(w, "\n%d %s: %d faithful, %d adopted, %d already ours, %d refused, %d failed.\n",
		s.n, s.what, s.faithful, s.adopted, s.ours, s.refused, s.failed)
	if !s.apply && s.faithful > 0 {
		fmt.Fprintf(w, "Dry run: nothing was written. Run again with --apply to %s.\n", s.write)
	}
	if s.faithful+s.adopted > 0 {
		fmt.Fprintf(w, "Once %s is ours, garbage collection removes from it every ServiceAccount that does not\ncarry this server's granted marker (see README, \"Coming from the upstream managers\").\n", s.object)
	}
	if s.notAdopted > 0 {
		return fmt.Errorf("%d of %d %s refused or not adopted", s.notAdopted, s.n, s.what)
	}
	return nil
}
