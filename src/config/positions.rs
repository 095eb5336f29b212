//! Where each value of routes.yaml sits in the text: key path -> 1-based line and column.
//!
//! serde_yaml only gives a location for its own errors. Semantic errors (a bad
//! duration, a route conflict, ...) need the position of a value, so the text is
//! parsed a second time with yaml-rust2's event parser and every node is
//! recorded under its key path: `listen`, `issuers[0].jwks_refresh`,
//! `routes[3]`, `forward.identity_headers.X-Auth-Subject`.
//!
//! yaml-rust2 0.13 counts lines from 1 and columns from 0 (its scanner starts
//! at `Marker::new(0, 1, 0)`, whatever the doc comment says); both are stored
//! here counted from 1. A test below pins this down.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A 1-based position in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Pos {
    pub(crate) line: usize,
    pub(crate) col: usize,
}

impl Pos {
    pub(crate) const START: Pos = Pos { line: 1, col: 1 };

    fn from_marker(m: Marker) -> Pos {
        Pos {
            line: m.line().max(1),
            col: m.col() + 1,
        }
    }
}

/// Key path -> position of the value (and of the key, for map entries).
#[derive(Debug, Default)]
pub(crate) struct Positions {
    values: HashMap<String, Pos>,
    keys: HashMap<String, Pos>,
}

impl Positions {
    /// Indexes `text`. A text yaml-rust2 cannot parse gives what was indexed
    /// before the problem (serde_yaml reports the syntax error itself).
    pub(crate) fn index(text: &str) -> Positions {
        let mut recv = Recorder::default();
        let mut parser = Parser::new_from_str(text);
        let _ = parser.load(&mut recv, false);
        recv.positions
    }

    /// Whether the file has a value at exactly `path`.
    pub(crate) fn contains(&self, path: &str) -> bool {
        self.values.contains_key(path)
    }

    /// The position of the value at `path`, else of its nearest recorded parent, else 1:1.
    pub(crate) fn value(&self, path: &str) -> Pos {
        let mut p = path;
        loop {
            if let Some(pos) = self.values.get(p) {
                return *pos;
            }
            match parent(p) {
                Some(up) => p = up,
                None => return Pos::START,
            }
        }
    }

    /// The position of the key of the map entry at `path`, else of its value
    /// (for sequence items and the root), with the same fallback.
    pub(crate) fn key(&self, path: &str) -> Pos {
        match self.keys.get(path) {
            Some(pos) => *pos,
            None => self.value(path),
        }
    }
}

/// `a.b[3].c` -> `a.b[3]` -> `a.b` -> `a` -> (root, `""`) -> None.
pub(crate) fn parent(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    if path.ends_with(']') {
        if let Some(i) = path.rfind('[') {
            return Some(&path[..i]);
        }
    }
    // Map keys may themselves contain dots (header names); the nearest dot is
    // good enough for a fallback.
    Some(path.rfind('.').map_or("", |i| &path[..i]))
}

/// `join("routes", 3)`-style helpers for building key paths.
pub(crate) fn field(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

pub(crate) fn item(parent: &str, index: usize) -> String {
    format!("{parent}[{index}]")
}

enum Frame {
    Map {
        path: String,
        /// `Some(key)` once the key of the current entry was read.
        key: Option<String>,
    },
    Seq {
        path: String,
        next: usize,
    },
}

#[derive(Default)]
struct Recorder {
    positions: Positions,
    stack: Vec<Frame>,
    /// Inside a non-scalar map key (rare; its nodes are not recorded).
    complex_key_depth: usize,
}

impl Recorder {
    /// Called for each node start: returns the node's path, or None if the node
    /// is a map key (recorded as such).
    fn node_path(&mut self, ev_scalar: Option<&str>, pos: Pos) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Seq { path, next }) => {
                let p = item(path, *next);
                *next += 1;
                Some(p)
            }
            Some(Frame::Map { path, key }) => match key.take() {
                Some(k) => Some(field(path, &k)),
                None => {
                    let k = ev_scalar.unwrap_or("?").to_string();
                    // yaml-rust2 marks a block mapping's start at its first
                    // `:`; the map's position is where its first key starts.
                    if let Some(start) = self.positions.values.get_mut(path.as_str()) {
                        if pos < *start {
                            *start = pos;
                        }
                    }
                    self.positions.keys.insert(field(path, &k), pos);
                    *key = Some(k);
                    None
                }
            },
        }
    }
}

impl MarkedEventReceiver for Recorder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = Pos::from_marker(mark);
        if self.complex_key_depth > 0 {
            match ev {
                Event::MappingStart(..) | Event::SequenceStart(..) => self.complex_key_depth += 1,
                Event::MappingEnd | Event::SequenceEnd => self.complex_key_depth -= 1,
                _ => {}
            }
            return;
        }
        match ev {
            Event::Scalar(value, ..) => {
                if let Some(path) = self.node_path(Some(&value), pos) {
                    self.positions.values.entry(path).or_insert(pos);
                }
            }
            Event::Alias(_) => {
                if let Some(path) = self.node_path(Some("*alias"), pos) {
                    self.positions.values.entry(path).or_insert(pos);
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let is_map = matches!(ev, Event::MappingStart(..));
                let is_key_position =
                    matches!(self.stack.last(), Some(Frame::Map { key: None, .. }));
                if is_key_position {
                    // A mapping or sequence used as a key: skip it whole.
                    let _ = self.node_path(None, pos);
                    self.complex_key_depth = 1;
                    return;
                }
                let Some(path) = self.node_path(None, pos) else {
                    return;
                };
                self.positions.values.entry(path.clone()).or_insert(pos);
                self.stack.push(if is_map {
                    Frame::Map { path, key: None }
                } else {
                    Frame::Seq { path, next: 0 }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_fall_back_to_parents() {
        let text = "listen: 0.0.0.0:8080\nroutes:\n  - path: /a\n    public: true\n  - {path: \"/b\", scopes: [x, y]}\nforward:\n  identity_headers:\n    X-A: sub\n";
        let p = Positions::index(text);
        let at = |line, col| Pos { line, col };
        assert_eq!(p.value("listen"), at(1, 9));
        assert_eq!(p.key("listen"), at(1, 1));
        assert_eq!(p.value("routes[0]"), at(3, 5));
        assert_eq!(p.value("routes[0].path"), at(3, 11));
        assert_eq!(p.key("routes[0].public"), at(4, 5));
        assert_eq!(p.value("routes[0].public"), at(4, 13));
        assert_eq!(p.value("routes[1]"), at(5, 5));
        assert_eq!(p.value("routes[1].path"), at(5, 12));
        assert_eq!(p.value("routes[1].scopes[1]"), at(5, 30));
        assert_eq!(p.key("forward.identity_headers.X-A"), at(8, 5));
        assert_eq!(p.value("forward.identity_headers.X-A"), at(8, 10));
        // Fallbacks: an unrecorded child -> its parent; nothing -> 1:1.
        assert_eq!(p.value("routes[0].methods"), at(3, 5));
        assert_eq!(p.value("routes[7].path"), p.value("routes"));
        assert_ne!(p.value("routes"), Pos::START);
        assert_eq!(p.value("nowhere"), Pos::START);
    }

    #[test]
    fn parent_paths() {
        assert_eq!(parent("routes[3].path"), Some("routes[3]"));
        assert_eq!(parent("routes[3]"), Some("routes"));
        assert_eq!(parent("routes"), Some(""));
        assert_eq!(parent(""), None);
    }
}
