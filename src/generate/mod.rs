//! Generation (placeholder, being written).

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("generation not written yet")]
    NotYet,
}
