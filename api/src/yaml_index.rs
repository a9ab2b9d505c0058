//! Maps field paths (`spec.http[0].route[1].weight`) of one YAML document to the lines they are
//! written on, so errors found after parsing can still point at a line.

use std::collections::HashMap;

use serde_saphyr::granit_parser::{Event, Parser};

/// Field path → 1-based line, relative to the start of the document's text.
#[derive(Debug, Default)]
pub(crate) struct LineIndex {
    lines: HashMap<String, usize>,
}

enum Frame {
    /// A mapping: the path of the mapping itself, and the key whose value comes next.
    Map { path: String, key: Option<String> },
    /// A sequence: its path and the index of the next item.
    Seq { path: String, next: usize },
}

impl LineIndex {
    /// Indexes `text`; a syntax error stops indexing where it occurs (the deserializer reports it).
    pub(crate) fn build(text: &str) -> Self {
        let mut lines = HashMap::new();
        let mut stack: Vec<Frame> = Vec::new();
        for item in Parser::new_from_str(text) {
            let Ok((event, span)) = item else { break };
            let line = span.start.line();
            match event {
                Event::Scalar(value, ..) => {
                    if let Some(Frame::Map { path, key }) = stack.last_mut()
                        && key.is_none()
                    {
                        let child = join_key(path, &value);
                        lines.entry(child).or_insert(line);
                        *key = Some(value.into_owned());
                        continue;
                    }
                    if !stack.is_empty() {
                        lines.entry(Self::child_path(&stack)).or_insert(line);
                    }
                    Self::value_done(&mut stack);
                }
                Event::MappingStart(..) | Event::SequenceStart(..) => {
                    let path = Self::child_path(&stack);
                    lines.entry(path.clone()).or_insert(line);
                    stack.push(if matches!(event, Event::MappingStart(..)) {
                        Frame::Map { path, key: None }
                    } else {
                        Frame::Seq { path, next: 0 }
                    });
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                    Self::value_done(&mut stack);
                }
                Event::Alias(..) => Self::value_done(&mut stack),
                _ => {}
            }
        }
        Self { lines }
    }

    /// The path of the value about to start under the top of the stack.
    fn child_path(stack: &[Frame]) -> String {
        match stack.last() {
            None => String::new(),
            Some(Frame::Map { path, key }) => join_key(path, key.as_deref().unwrap_or("?")),
            Some(Frame::Seq { path, next }) => format!("{path}[{next}]"),
        }
    }

    /// A value finished under the top of the stack: a map expects its next key, a sequence
    /// its next item.
    fn value_done(stack: &mut [Frame]) {
        match stack.last_mut() {
            Some(Frame::Map { key, .. }) => *key = None,
            Some(Frame::Seq { next, .. }) => *next += 1,
            None => {}
        }
    }

    /// The line of `path`, or of its nearest written ancestor (a missing field is reported at
    /// the object that lacks it).
    pub(crate) fn line_of(&self, path: &str) -> Option<usize> {
        let mut path = path;
        loop {
            if let Some(line) = self.lines.get(path) {
                return Some(*line);
            }
            if path.is_empty() {
                return None;
            }
            let cut = path.rfind(['.', '[']).unwrap_or(0);
            path = &path[..cut];
        }
    }
}

fn join_key(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_their_lines() {
        let text = "a: 1\nspec:\n  http:\n  - route:\n    - weight: 90\n    - weight: 10\n  hosts: [x, y]\n";
        let idx = LineIndex::build(text);
        assert_eq!(idx.line_of("a"), Some(1));
        assert_eq!(idx.line_of("spec.http[0].route[1].weight"), Some(6));
        assert_eq!(idx.line_of("spec.http[0].route[0]"), Some(5));
        assert_eq!(idx.line_of("spec.hosts[1]"), Some(7));
        // A missing field falls back to its parent.
        assert_eq!(idx.line_of("spec.http[0].timeout"), Some(4));
    }
}
