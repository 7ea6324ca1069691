//! Training language models: AdamW, the learning-rate schedule, gradient
//! clipping, token batches and the training loop's state.

mod data;
mod optim;
mod schedule;

pub use data::{cross_entropy, ByteTokenizer, TokenBatches, Tokenizer};
pub use optim::{clip_grad_norm, AdamW, AdamWConfig};
pub use schedule::WarmupCosine;
