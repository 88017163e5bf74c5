{{/*
The server's least-privilege IAM policy (JSON). IAM policies cannot carry comments: the reasoning
for every statement is in providers/aws/doc.go. The seed-specific statements are repeated for
every seed, so a derived role can only be tagged with, and edited under, its own seed. Every call
that can grant permissions (CreateRole, PutRolePolicy, AttachRolePolicy, PutRolePermissionsBoundary)
requires the permissions boundary aws.permissionsBoundaryArn, so the chart refuses to render the
policy for seeds without it. With no seed roles the placeholders ACCOUNT_ID, SEED_PATH, SEED_NAME,
SEED_MANAGED_POLICY, SEED_TAG_KEY and PERMISSIONS_BOUNDARY stand in.
*/}}
{{- define "credential-webhook.iamPolicy" -}}
{{- $placeholder := empty .Values.aws.seedRoles }}
{{- $seeds := .Values.aws.seedRoles | default (list "arn:aws:iam::ACCOUNT_ID:role/SEED_PATH/SEED_NAME") }}
{{- $managed := .Values.aws.iamPolicy.managedPolicyArns }}
{{- $tagKeys := .Values.aws.iamPolicy.copiedTagKeys }}
{{- $boundary := .Values.aws.permissionsBoundaryArn }}
{{- if $placeholder }}
{{- $managed = list "arn:aws:iam::ACCOUNT_ID:policy/SEED_MANAGED_POLICY" }}
{{- $tagKeys = list "SEED_TAG_KEY" }}
{{- $boundary = "arn:aws:iam::ACCOUNT_ID:policy/PERMISSIONS_BOUNDARY" }}
{{- else if not $boundary }}
{{- fail "aws.seedRoles is set but aws.permissionsBoundaryArn is not: the IAM policy lets the server create and widen derived roles only under that permissions boundary, so it cannot be rendered without it (set aws.permissionsBoundaryArn to the managed policy ARN, or aws.iamPolicy.configMap=false and write the policy yourself)" }}
{{- end }}
{{- $tag := "credential-webhook.klusters.dev/seed-role" }}
{{- $keys := prepend $tagKeys $tag | uniq }}
{{- /* TagRole may also mark a derived role empty (garbage collection deletes it after a grace). */}}
{{- $tagRoleKeys := append $keys "credential-webhook.klusters.dev/empty-since" | uniq -}}
{
  "Version": "2012-10-17",
  "Statement": [
    {
      "Sid": "ListRolesAndReadQuota",
      "Effect": "Allow",
      "Action": [
        "iam:ListRoles",
        "iam:GetAccountSummary"
      ],
      "Resource": "*"
    }
{{- range $i, $seed := $seeds }}
{{- $sid := ternary "" (printf "Seed%d" $i) (eq (len $seeds) 1) }}
{{- $op := ternary "StringLike" "StringEquals" (or (contains "*" $seed) (contains "?" $seed)) }}
{{- $derived := printf "%s-*" $seed }}
{{- $requestTag := printf "aws:RequestTag/%s" $tag }}
{{- $resourceTag := printf "aws:ResourceTag/%s" $tag }}
{{- $inBoundary := dict "StringEquals" (dict "iam:PermissionsBoundary" $boundary) }},
    {
      "Sid": {{ printf "ReadSeedAndDerivedRoles%s" $sid | toJson }},
      "Effect": "Allow",
      "Action": [
        "iam:GetRole",
        "iam:ListAttachedRolePolicies",
        "iam:ListRolePolicies",
        "iam:GetRolePolicy"
      ],
      "Resource": [
        {{ $seed | toJson }},
        {{ $derived | toJson }}
      ]
    },
    {
      "Sid": {{ printf "CreateDerivedRolesTaggedWithTheirSeed%s" $sid | toJson }},
      "Effect": "Allow",
      "Action": "iam:CreateRole",
      "Resource": {{ $derived | toJson }},
      {{- include "credential-webhook.iamCondition" (merge (dict $op (dict $requestTag $seed)) (deepCopy $inBoundary) (dict "ForAllValues:StringEquals" (dict "aws:TagKeys" $keys))) | nindent 6 }}
    },
    {
      "Sid": {{ printf "TagDerivedRolesOnlyWithTheirSeed%s" $sid | toJson }},
      "Effect": "Allow",
      "Action": "iam:TagRole",
      "Resource": {{ $derived | toJson }},
      {{- include "credential-webhook.iamCondition" (dict $op (dict $resourceTag $seed $requestTag $seed) "ForAllValues:StringEquals" (dict "aws:TagKeys" $tagRoleKeys)) | nindent 6 }}
    },
    {
      "Sid": {{ printf "EditOwnDerivedRoles%s" $sid | toJson }},
      "Effect": "Allow",
      "Action": [
        "iam:UpdateAssumeRolePolicy",
        "iam:UpdateRole",
        "iam:DeleteRolePolicy",
        "iam:DetachRolePolicy",
        "iam:DeleteRole"
      ],
      "Resource": {{ $derived | toJson }},
      {{- include "credential-webhook.iamCondition" (dict $op (dict $resourceTag $seed)) | nindent 6 }}
    },
    {
      "Sid": {{ printf "WidenOwnDerivedRolesOnlyWithinTheBoundary%s" $sid | toJson }},
      "Effect": "Allow",
      "Action": [
        "iam:PutRolePolicy",
        "iam:PutRolePermissionsBoundary"
      ],
      "Resource": {{ $derived | toJson }},
      {{- include "credential-webhook.iamCondition" (merge (dict $op (dict $resourceTag $seed)) (deepCopy $inBoundary)) | nindent 6 }}
    },
    {
      "Sid": {{ printf "UntagOwnDerivedRolesButNeverTheSeedTag%s" $sid | toJson }},
      "Effect": "Allow",
      "Action": "iam:UntagRole",
      "Resource": {{ $derived | toJson }},
      {{- include "credential-webhook.iamCondition" (dict $op (dict $resourceTag $seed) "ForAllValues:StringNotEquals" (dict "aws:TagKeys" (list $tag))) | nindent 6 }}
    }
{{- if $managed }},
    {
      "Sid": {{ printf "AttachOnlyTheSeedsManagedPolicies%s" $sid | toJson }},
      "Effect": "Allow",
      "Action": "iam:AttachRolePolicy",
      "Resource": {{ $derived | toJson }},
      {{- include "credential-webhook.iamCondition" (merge (dict $op (dict $resourceTag $seed)) (deepCopy $inBoundary) (dict "ArnEquals" (dict "iam:PolicyARN" $managed))) | nindent 6 }}
    }
{{- end }}
{{- end }}
  ]
}
{{- end }}

{{/*
"Condition": {...} of an IAM policy statement from a dict of operator -> condition key -> value
(a string, or a list rendered one entry a line), keys in sorted order.
*/}}
{{- define "credential-webhook.iamCondition" -}}
"Condition": {
{{- $n := len . }}
{{- $i := 0 }}
{{- range $op, $keys := . }}
  {{ $op | toJson }}: {
{{- $m := len $keys }}
{{- $j := 0 }}
{{- range $k, $v := $keys }}
    {{ $k | toJson }}: {{ if kindIs "slice" $v }}[
{{- range $l, $e := $v }}
      {{ $e | toJson }}{{ if lt (add1 $l) (len $v) }},{{ end }}
{{- end }}
    ]{{ else }}{{ $v | toJson }}{{ end }}{{ $j = add1 $j }}{{ if lt $j $m }},{{ end }}
{{- end }}
  }{{ $i = add1 $i }}{{ if lt $i $n }},{{ end }}
{{- end }}
}
{{- end }}
