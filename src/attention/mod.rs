//! Attention policies: which cache slot each token goes to and which position it gets.
