"""The Bigram-Backcopy (BB) task of Guo et al. (2024), "Active-Dormant Attention Heads", and the
small transformers trained on it.

Task (character level):
- vocabulary: the V characters of a corpus (Brown by default; the paper uses tiny Shakespeare),
  then ⟨s⟩ (id V) and an unused delimiter (id V+1, also the tokenizer's unknown/pad token);
- triggers: the k most frequent characters by unigram marginal (k = 3 by default);
- a sequence starts with ⟨s⟩; the first character is drawn from the unigram marginal with the
  triggers given probability 0; after that, if the previous token is a trigger the next token
  copies the token before the trigger (backcopy), otherwise it is drawn from the bigram row of
  the previous token. Inputs are positions 0..L-1 and targets 1..L (L = 256).

Risks: cross-entropy on backcopy positions (input token is a trigger) and on bigram positions
(input token is a character that is not a trigger; the ⟨s⟩ position is in neither). The Bayes
risk on bigram positions is the conditional entropy of the transition rows weighted by how often
each character occurs at a bigram position of a BB sequence; `BBTask.bigram_optimum` computes it
exactly by propagating the (previous, current) token distribution through all positions. On a
finite evaluation set the empirical risk of the true transition matrix varies by several percent
around that optimum (sequences fall into long loops), so a model's bigram risk is also compared,
paired, with the oracle risk on the very same positions (`BBTask.oracle_bigram_risk`,
`paired_gap`).

Model (the paper's): pre-LN, learned absolute positions, one head with d_head = d_model = 256,
ReLU MLP of width 4d, untied unembedding, no linear biases (b_Q, b_K, b_V, b_O, b_in, b_out and
b_U are zeroed and frozen; the LayerNorms keep a trainable bias, as nn.LayerNorm in the paper's
code; `layernorm_bias=False` freezes them at zero too, the workbench's earlier variant), token
and position embeddings drawn from N(0, 1) (PyTorch's nn.Embedding default, which the paper's
code uses). Other weights: TransformerLens's default init N(0, 0.8/√d_model) (`init="tl"`), or
the paper code's nn.Linear default U(±1/√fan_in) (`init="torch"`). With the smaller torch init
our 1-layer runs first parked the dormant attention on the trigger tokens instead of ⟨s⟩ (sink
mass 0.057 at step 709, batch 32, lr 3e-4), so "tl" is the default. Optimisers: AdamW (lr 3e-4,
wd 1e-4, betas 0.9/0.99), SGD (momentum 0.9, lr 0.03, wd 1e-4), and AdamW with ReLU attention
(weights ReLU(scores/√d_head)/i, i the 1-based query position). No gradient clipping, constant
learning rate, as in the paper.

The package: `task` (the task and its exact risks), `model` (config, init, frozen biases, ReLU
attention), `recipes` (what a run is and where it is cached), `training` (resumable training and
checkpoints), `evaluation` (risks, paired with the oracle).

A recipe fixes the data (each step's batch is a function of the seed and the step) and the init,
so training is repeatable on one machine with one thread count. Another thread count sums in
another order (after 20 AdamW steps W_Q differs in the 7th digit), and the training dynamics
amplify that: the 1-layer recipe at seed 1, batch 32, reached sink mass 0.817 at step 1700 on one
2-core machine and 0.745 at step 1759 on another. Read one run's sink mass as one draw.
"""

from probes.attention_sinks.bigram_backcopy.evaluation import bb_risks, paired_gap
from probes.attention_sinks.bigram_backcopy.model import (
    RELU_ATTENTION,
    bb_model,
    bb_model_config,
    bos_self_scores,
    freeze_biases,
    install_relu_attention,
    relu_attention_pattern,
)
from probes.attention_sinks.bigram_backcopy.recipes import (
    BB_VARIANTS,
    BBRecipe,
    bb_dir,
    bb_recipe,
    relu_inactive_seed,
)
from probes.attention_sinks.bigram_backcopy.task import (
    BOS_TOKEN,
    CHARSETS,
    DELIM_TOKEN,
    SEQ_LEN,
    BBTask,
    load_bb_task,
)
from probes.attention_sinks.bigram_backcopy.training import (
    bb_checkpoints,
    bb_loss,
    bb_train_time,
    load_bb,
    task_of_model,
    train_bb,
)

__all__ = [
    "BBRecipe",
    "BBTask",
    "BB_VARIANTS",
    "BOS_TOKEN",
    "CHARSETS",
    "DELIM_TOKEN",
    "RELU_ATTENTION",
    "SEQ_LEN",
    "bb_checkpoints",
    "bb_dir",
    "bb_loss",
    "bb_model",
    "bb_model_config",
    "bb_recipe",
    "bb_risks",
    "bb_train_time",
    "bos_self_scores",
    "freeze_biases",
    "install_relu_attention",
    "load_bb",
    "load_bb_task",
    "paired_gap",
    "relu_attention_pattern",
    "relu_inactive_seed",
    "task_of_model",
    "train_bb",
]
