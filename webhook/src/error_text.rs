//! Errors as one line of text for a person: each cause in the chain once.

/// The error and its sources, one line.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(s) = next {
        let line = s.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        next = s.source();
    }
    text
}
