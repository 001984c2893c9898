//! Where each config path sits in its YAML file: a map from `auth_types[2].fallback` style paths
//! to line and column, built from the parser's events, so every validation issue can point at the
//! line an operator has to fix.

use std::collections::HashMap;

use serde_saphyr::granit_parser::{Event, Parser};

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl Position {
    pub const START: Position = Position { line: 1, column: 1 };
}

enum Frame {
    Map {
        path: String,
        key: Option<String>,
    },
    Seq {
        path: String,
        index: usize,
    },
    /// A mapping or sequence used as a key: its insides have no config path.
    ComplexKey,
}

/// Positions of every key (for mapping entries) and every item (for sequence entries).
#[derive(Debug, Default, Clone)]
pub struct PositionIndex {
    positions: HashMap<String, Position>,
}

impl PositionIndex {
    /// Indexes a document. Text that does not parse yields what was seen before the fault; the
    /// typed parse reports the syntax error itself.
    pub fn build(text: &str) -> Self {
        let mut index = Self::default();
        let mut stack: Vec<Frame> = Vec::new();
        for event in Parser::new_from_str(text) {
            let Ok((event, span)) = event else { break };
            let here = Position {
                line: span.start.line(),
                column: span.start.col() + 1,
            };
            match event {
                Event::Scalar(value, ..) => {
                    if let Some(Frame::Map {
                        path,
                        key: key @ None,
                    }) = stack.last_mut()
                    {
                        let child = join_key(path, &value);
                        index.positions.entry(child).or_insert(here);
                        *key = Some(value.into_owned());
                    } else {
                        index.record_value(&stack, here);
                        complete_value(&mut stack);
                    }
                }
                Event::Alias(_) => {
                    index.record_value(&stack, here);
                    complete_value(&mut stack);
                }
                Event::MappingStart(..) | Event::SequenceStart(..) => {
                    let is_map = matches!(event, Event::MappingStart(..));
                    let frame = match value_path(&stack) {
                        Some(path) => {
                            index.positions.entry(path.clone()).or_insert(here);
                            if is_map {
                                Frame::Map { path, key: None }
                            } else {
                                Frame::Seq { path, index: 0 }
                            }
                        }
                        None => Frame::ComplexKey,
                    };
                    stack.push(frame);
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                    complete_value(&mut stack);
                }
                _ => {}
            }
        }
        index
    }

    fn record_value(&mut self, stack: &[Frame], here: Position) {
        if let Some(path) = value_path(stack) {
            self.positions.entry(path).or_insert(here);
        }
    }

    /// The position of `path`, or of its nearest ancestor that is in the file (a missing field
    /// points at the mapping that lacks it), or the start of the file.
    pub fn locate(&self, path: &str) -> Position {
        let mut candidate = path;
        loop {
            if let Some(position) = self.positions.get(candidate) {
                return *position;
            }
            match candidate.rfind(['.', '[']) {
                Some(cut) => candidate = &candidate[..cut],
                None => return Position::START,
            }
        }
    }

    /// The keys of the top-level mapping.
    pub fn top_level_keys(&self) -> Vec<String> {
        self.positions
            .keys()
            .filter(|path| !path.is_empty() && !path.contains(['.', '[']))
            .cloned()
            .collect()
    }

    /// Whether `path` is written in the file (as opposed to taking its default).
    pub fn contains(&self, path: &str) -> bool {
        self.positions.contains_key(path)
    }
}

fn join_key(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

/// The path of the node that the next value event starts, or `None` inside a complex key.
fn value_path(stack: &[Frame]) -> Option<String> {
    match stack.last() {
        None => Some(String::new()),
        Some(Frame::Map {
            path,
            key: Some(key),
        }) => Some(join_key(path, key)),
        Some(Frame::Map { path, key: None }) => Some(format!("{path}.?")),
        Some(Frame::Seq { path, index }) => Some(format!("{path}[{index}]")),
        Some(Frame::ComplexKey) => None,
    }
}

fn complete_value(stack: &mut [Frame]) {
    match stack.last_mut() {
        Some(Frame::Map { key, .. }) => *key = None,
        Some(Frame::Seq { index, .. }) => *index += 1,
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
listen:
  proxy: \"127.0.0.1:8080\"
auth_types:
  - name: a
    method: sms
  - { name: b, fallback: a }
callbacks: { endpoints: [ { url: x } ] }
";

    #[test]
    fn keys_and_items_have_their_positions() {
        let index = PositionIndex::build(DOC);
        assert_eq!(
            index.locate("listen.proxy"),
            Position { line: 2, column: 3 }
        );
        assert_eq!(
            index.locate("auth_types[0]"),
            Position { line: 4, column: 5 }
        );
        assert_eq!(
            index.locate("auth_types[0].method"),
            Position { line: 5, column: 5 }
        );
        assert_eq!(
            index.locate("auth_types[1].fallback"),
            Position {
                line: 6,
                column: 16
            }
        );
        assert_eq!(
            index.locate("callbacks.endpoints[0].url"),
            Position {
                line: 7,
                column: 29
            }
        );
    }

    #[test]
    fn missing_paths_point_at_their_nearest_ancestor() {
        let index = PositionIndex::build(DOC);
        assert_eq!(
            index.locate("auth_types[1].ttl_seconds"),
            index.locate("auth_types[1]")
        );
        assert_eq!(index.locate("secret_key"), Position::START);
        assert!(index.contains("listen.proxy"));
        assert!(!index.contains("listen.api"));
    }
}
