//! Maps JSON pointers into a YAML document to the line and column where they are written,
//! so errors found after parsing (a plugin's schema, an unknown plugin) can point there.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Positions of every node, by JSON pointer (1-based line and column). For a mapping
/// entry the position is that of its key.
#[derive(Debug, Default)]
pub struct Positions {
    map: HashMap<String, (usize, usize)>,
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, index: usize },
}

#[derive(Default)]
struct Collector {
    stack: Vec<Frame>,
    map: HashMap<String, (usize, usize)>,
}

fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

impl Collector {
    /// The pointer of the node that starts now, or `None` when this scalar is a key.
    fn next_path(&mut self, mark: Marker, scalar: Option<&str>) -> Option<String> {
        let pos = (mark.line(), mark.col() + 1);
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Seq { path, index }) => {
                let p = format!("{path}/{index}");
                *index += 1;
                self.map.entry(p.clone()).or_insert(pos);
                Some(p)
            }
            Some(Frame::Map { path, key }) => match key.take() {
                Some(k) => Some(format!("{path}/{}", escape(&k))),
                None => {
                    let k = scalar.unwrap_or("").to_owned();
                    self.map.insert(format!("{path}/{}", escape(&k)), pos);
                    *key = Some(k);
                    None
                }
            },
        }
    }
}

impl MarkedEventReceiver for Collector {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(value, ..) => {
                if let Some(p) = self.next_path(mark, Some(&value)) {
                    self.map.entry(p).or_insert((mark.line(), mark.col() + 1));
                }
            }
            Event::Alias(_) => {
                if let Some(p) = self.next_path(mark, None) {
                    self.map.entry(p).or_insert((mark.line(), mark.col() + 1));
                }
            }
            Event::MappingStart(..) => {
                let path = self.next_path(mark, None).unwrap_or_default();
                self.map.entry(path.clone()).or_insert((mark.line(), mark.col() + 1));
                self.stack.push(Frame::Map { path, key: None });
            }
            Event::SequenceStart(..) => {
                let path = self.next_path(mark, None).unwrap_or_default();
                self.map.entry(path.clone()).or_insert((mark.line(), mark.col() + 1));
                self.stack.push(Frame::Seq { path, index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

impl Positions {
    /// Positions of the nodes of `text`; empty when the YAML does not parse.
    pub fn of(text: &str) -> Self {
        let mut c = Collector::default();
        let mut parser = Parser::new_from_str(text);
        let _ = parser.load(&mut c, false);
        Positions { map: c.map }
    }

    /// The position of `pointer`, or of its nearest ancestor that has one.
    pub fn find(&self, pointer: &str) -> Option<(usize, usize)> {
        let mut p = pointer;
        loop {
            if let Some(pos) = self.map.get(p) {
                return Some(*pos);
            }
            let cut = p.rfind('/')?;
            p = &p[..cut];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_keys_items_and_ancestors() {
        let text = "source:\n  plugin: http\n  config:\n    listen: x\ntransforms:\n  - plugin: validate\n    config: {schema: a.json}\n";
        let p = Positions::of(text);
        assert_eq!(p.find("/source/config/listen"), Some((4, 5)));
        assert_eq!(p.find("/transforms/0/plugin"), Some((6, 5)));
        assert_eq!(p.find("/transforms/0/config/schema"), Some((7, 14)));
        assert_eq!(p.find("/transforms/0/config/nope"), Some((7, 5)));
    }
}
