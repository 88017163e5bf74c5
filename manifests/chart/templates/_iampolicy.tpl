{{/*
The server's least-privilege IAM policy (JSON). IAM policies cannot carry comments: the reasoning
for every statement is in providers/aws/doc.go. The seed-specific statements are repeated for
every seed, so a derived role can only be tagged with, and edited under, its own seed. With no
seed roles the placeholders ACCOUNT_ID, SEED_PATH, SEED_NAME and SEED_MANAGED_POLICY stand in.
*/}}
{{- define "credential-webhook.iamPolicy" -}}
{{- $placeholder := empty .Values.aws.seedRoles }}
{{- $seeds := .Values.aws.seedRoles | default (list "arn:aws:iam::ACCOUNT_ID:role/SEED_PATH/SEED_NAME") }}
{{- $managed := .Values.aws.iamPolicy.managedPolicyArns }}
{{- if $placeholder }}{{ $managed = list "arn:aws:iam::ACCOUNT_ID:policy/SEED_MANAGED_POLICY" }}{{ end }}
{{- $tag := "credential-webhook.klusters.dev/seed-role" -}}
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
{{- range $i, $raw := $seeds }}
{{- $seed := ternary "arn:aws:iam::*:role/*" $raw (eq $raw "*") }}
{{- $sid := ternary "" (printf "Seed%d" $i) (eq (len $seeds) 1) }}
{{- $op := ternary "StringLike" "StringEquals" (or (contains "*" $seed) (contains "?" $seed)) }}
{{- $derived := printf "%s-*" $seed }},
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
      "Condition": {
        {{ $op | toJson }}: {
          {{ printf "aws:RequestTag/%s" $tag | toJson }}: {{ $seed | toJson }}
        }
      }
    },
    {
      "Sid": {{ printf "TagDerivedRolesOnlyWithTheirSeed%s" $sid | toJson }},
      "Effect": "Allow",
      "Action": "iam:TagRole",
      "Resource": {{ $derived | toJson }},
      "Condition": {
        {{ $op | toJson }}: {
          {{ printf "aws:RequestTag/%s" $tag | toJson }}: {{ $seed | toJson }}
        }
      }
    },
    {
      "Sid": {{ printf "EditOwnDerivedRoles%s" $sid | toJson }},
      "Effect": "Allow",
      "Action": [
        "iam:UpdateAssumeRolePolicy",
        "iam:UpdateRole",
        "iam:PutRolePolicy",
        "iam:DeleteRolePolicy",
        "iam:DetachRolePolicy",
        "iam:PutRolePermissionsBoundary",
        "iam:DeleteRolePermissionsBoundary",
        "iam:DeleteRole"
      ],
      "Resource": {{ $derived | toJson }},
      "Condition": {
        {{ $op | toJson }}: {
          {{ printf "aws:ResourceTag/%s" $tag | toJson }}: {{ $seed | toJson }}
        }
      }
    },
    {
      "Sid": {{ printf "UntagOwnDerivedRolesButNeverTheSeedTag%s" $sid | toJson }},
      "Effect": "Allow",
      "Action": "iam:UntagRole",
      "Resource": {{ $derived | toJson }},
      "Condition": {
        {{ $op | toJson }}: {
          {{ printf "aws:ResourceTag/%s" $tag | toJson }}: {{ $seed | toJson }}
        },
        "ForAllValues:StringNotEquals": {
          "aws:TagKeys": [
            {{ $tag | toJson }}
          ]
        }
      }
    }
{{- if $managed }},
    {
      "Sid": {{ printf "AttachOnlyTheSeedsManagedPolicies%s" $sid | toJson }},
      "Effect": "Allow",
      "Action": "iam:AttachRolePolicy",
      "Resource": {{ $derived | toJson }},
      "Condition": {
        {{ $op | toJson }}: {
          {{ printf "aws:ResourceTag/%s" $tag | toJson }}: {{ $seed | toJson }}
        },
        "ArnEquals": {
          "iam:PolicyARN": [
{{- range $j, $p := $managed }}{{ if $j }},{{ end }}
            {{ $p | toJson }}
{{- end }}
          ]
        }
      }
    }
{{- end }}
{{- end }}
  ]
}
{{- end }}
