//! Training language models: AdamW, the learning-rate schedule, gradient
//! accumulation and clipping, token batches, the training loop (with
//! callbacks) and crash-consistent checkpoint sets.

mod callback;
mod checkpoint;
mod data;
mod fit;
mod optim;
mod schedule;
mod trainer;

pub use callback::{OnStep, StepReport, TrainerCallback};
pub use checkpoint::{
    recover_checkpoint, verify_checkpoint, CheckpointWriter, Manifest, ManifestFile, MANIFEST,
};
pub use data::{cross_entropy, ByteTokenizer, TokenBatches, Tokenizer};
pub use fit::{FitSummary, SaveTo};
pub use optim::{clip_grad_norm, AdamW, AdamWConfig};
pub use schedule::WarmupCosine;
pub use trainer::{
    TrainConfig, Trainer, TrainerRecord, MAX_GRAD_ACCUM_STEPS, MAX_LOGITS_PER_STEP, MAX_STEPS,
    MAX_TOKENS_PER_STEP, OPTIMIZER_FILE, TRAINER_FILE,
};
