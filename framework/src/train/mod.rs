//! Training language models: AdamW, the learning-rate schedule, gradient
//! clipping, token batches, the training loop's state and crash-consistent
//! checkpoint sets.

mod checkpoint;
mod data;
mod optim;
mod schedule;
mod trainer;

pub use checkpoint::{
    recover_checkpoint, verify_checkpoint, CheckpointWriter, Manifest, ManifestFile, MANIFEST,
};
pub use data::{cross_entropy, ByteTokenizer, TokenBatches, Tokenizer};
pub use optim::{clip_grad_norm, AdamW, AdamWConfig};
pub use schedule::WarmupCosine;
pub use trainer::{
    TrainConfig, Trainer, TrainerRecord, MAX_LOGITS_PER_STEP, MAX_STEPS, MAX_TOKENS_PER_STEP,
    OPTIMIZER_FILE, TRAINER_FILE,
};
