"""The judge layer: how a feedback model is asked about responses and how its answers become
labels. Shared by labelling (rl_cai), evaluation, self-play, the RL rewards and RBR, which is why
it sits below them all (they are stages; stages do not import each other).

- `layout`: the A/B comparison question, few-shot turns and pre-filled answer stub.
- `rating`: the 1-9 rating question of direct RLAIF rewards.
- `labels`: log-probs to soft labels p(A) (softmax, swap average, clamp) and label rows to DPO rows.
- `compare`: asking a judge A/B comparisons and yes/no checks (both orders, swap average).
- `human`: loading human preference rows (mixed into labels, reference for the judge audit).
- `soft_labels`: Bradley–Terry with soft labels (the preference model's loss and metrics).
"""
