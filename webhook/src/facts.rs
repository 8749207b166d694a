//! Node facts, shared with the operator: see [`boundary_api::nodes`].

pub use boundary_api::nodes::*;
