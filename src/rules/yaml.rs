//! Where every node of a YAML document is: a path → position index built from libyaml's events.
//!
//! `yaml_serde` gives values without positions and stops at the first error. Rule files are
//! decoded field by field from a `yaml_serde::Value` (so every error of a file is found), and
//! each error is placed with this index: the same libyaml parser (`libyaml-rs`, already under
//! `yaml_serde`) run once more for its events, each of which carries a mark. The index holds,
//! per node path (`metrics[1].max_increase`), the key's and the value's line and column and,
//! for scalars written on one line, their source text, so a message can point inside a
//! template string.
//!
//! This is the project's only `unsafe` code: libyaml-rs is a C translation with a raw-pointer
//! API. The parser lives in a `Box` (libyaml keeps pointers into it and into the input, which
//! outlives it), every event is deleted after it is read, and the parser is deleted on drop.

use libyaml_rs as sys;
use std::collections::HashMap;
use std::fmt;
use std::mem::MaybeUninit;

/// A place in the text: 1-based line and column (in characters).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Mark {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

impl Mark {
    fn from_sys(m: sys::yaml_mark_t) -> Self {
        Mark {
            line: m.line as usize + 1,
            column: m.column as usize + 1,
        }
    }
}

/// One step of a path into a document.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Seg {
    /// A mapping key.
    Key(String),
    /// A sequence index.
    Index(usize),
}

impl fmt::Display for Seg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Seg::Key(k) => f.write_str(k),
            Seg::Index(i) => write!(f, "[{i}]"),
        }
    }
}

/// Formats a path as `metrics[1].max_increase`.
pub fn path_text(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// How a node is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// A plain scalar.
    Plain,
    /// `'single quoted'`.
    SingleQuoted,
    /// `"double quoted"`.
    DoubleQuoted,
    /// A `|` or `>` block scalar.
    Block,
    /// A mapping.
    Mapping,
    /// A sequence.
    Sequence,
    /// An alias (`*name`): what it stands for has no positions of its own.
    Alias,
}

/// Where one node is.
#[derive(Clone, Debug, PartialEq)]
pub struct Span {
    /// The key, for a mapping value.
    pub key: Option<Mark>,
    /// The start of the value.
    pub start: Mark,
    /// The end of the value.
    pub end: Mark,
    /// How it is written.
    pub style: Style,
    /// The source text of a scalar written on one line (quotes included).
    pub source: Option<String>,
}

impl Span {
    /// The position of the value's character at `offset` (in characters of the parsed value),
    /// when the scalar is on one line and the offset can be mapped through its quoting;
    /// otherwise the start of the value.
    pub fn at_offset(&self, offset: usize) -> Mark {
        let Some(source) = &self.source else {
            return self.start;
        };
        let chars: Vec<char> = source.chars().collect();
        let (mut i, quote) = match self.style {
            Style::Plain => (0, None),
            Style::SingleQuoted => (1, Some('\'')),
            Style::DoubleQuoted => (1, Some('"')),
            _ => return self.start,
        };
        let mut value_pos = 0;
        while value_pos < offset {
            match (quote, chars.get(i)) {
                (_, None) => return self.start,
                // `''` is one quote in a single-quoted scalar.
                (Some('\''), Some('\'')) if chars.get(i + 1) == Some(&'\'') => i += 2,
                // Escapes change lengths: give up on precision.
                (Some('"'), Some('\\')) => return self.start,
                _ => i += 1,
            }
            value_pos += 1;
        }
        Mark {
            line: self.start.line,
            column: self.start.column + i,
        }
    }
}

/// A YAML syntax error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntaxError {
    /// Where the problem is.
    pub mark: Mark,
    /// What it is, with the construct it was found in.
    pub message: String,
}

/// The positions of a document's nodes, by path.
#[derive(Clone, Debug, Default)]
pub struct Positions {
    nodes: HashMap<Vec<Seg>, Span>,
}

impl Positions {
    /// The node at exactly `path`.
    pub fn get(&self, path: &[Seg]) -> Option<&Span> {
        self.nodes.get(path)
    }

    /// The node at `path`, or its nearest ancestor that has a position (an alias's children
    /// have none), or the start of the file.
    pub fn nearest(&self, path: &[Seg]) -> Span {
        (0..=path.len())
            .rev()
            .find_map(|n| self.nodes.get(&path[..n]))
            .cloned()
            .unwrap_or(Span {
                key: None,
                start: Mark { line: 1, column: 1 },
                end: Mark { line: 1, column: 1 },
                style: Style::Mapping,
                source: None,
            })
    }

    /// Where the key of the field at `path` is (the value when it has no key).
    pub fn key(&self, path: &[Seg]) -> Mark {
        let span = self.nearest(path);
        match self.get(path) {
            Some(s) => s.key.unwrap_or(s.start),
            None => span.start,
        }
    }

    /// Where the value at `path` starts (or its nearest ancestor).
    pub fn value(&self, path: &[Seg]) -> Mark {
        self.nearest(path).start
    }

    /// The number of indexed nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether nothing was indexed.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

/// The parser, boxed so its address stays put while libyaml points into it.
struct Parser<'a> {
    sys: Box<MaybeUninit<sys::yaml_parser_t>>,
    _input: &'a [u8],
}

/// One event, converted to owned data.
enum Event {
    StreamEnd,
    DocumentStart,
    Scalar { value: String, style: Style },
    Alias,
    SequenceStart,
    SequenceEnd,
    MappingStart,
    MappingEnd,
    Other,
}

impl<'a> Parser<'a> {
    fn new(input: &'a [u8]) -> Self {
        let mut sys = Box::new(MaybeUninit::<sys::yaml_parser_t>::uninit());
        // SAFETY: initialize zeroes and sets up the struct behind the pointer; the input
        // slice outlives the parser (it is borrowed for 'a, and the parser is dropped first).
        unsafe {
            let p = sys.as_mut_ptr();
            if sys::yaml_parser_initialize(p).fail {
                panic!("libyaml: out of memory initialising the parser");
            }
            sys::yaml_parser_set_encoding(p, sys::YAML_UTF8_ENCODING);
            sys::yaml_parser_set_input_string(p, input.as_ptr(), input.len() as _);
        }
        Parser { sys, _input: input }
    }

    fn error(&self) -> SyntaxError {
        // SAFETY: the parser is initialised; problem/context are NUL-terminated static
        // strings or null.
        unsafe {
            let p = &*self.sys.as_ptr();
            let text = |ptr: *const core::ffi::c_char| -> Option<String> {
                (!ptr.is_null())
                    .then(|| std::ffi::CStr::from_ptr(ptr).to_string_lossy().into_owned())
            };
            let problem = text(p.problem.cast()).unwrap_or_else(|| "invalid YAML".into());
            let mark = Mark::from_sys(p.problem_mark);
            let message = match text(p.context.cast()) {
                Some(context) => {
                    let c = Mark::from_sys(p.context_mark);
                    format!(
                        "YAML syntax: {problem} ({context} that starts at {}:{})",
                        c.line, c.column
                    )
                }
                None => format!("YAML syntax: {problem}"),
            };
            SyntaxError { mark, message }
        }
    }

    /// The next event with its start and end marks.
    fn next(&mut self) -> Result<(Event, Mark, Mark), SyntaxError> {
        let mut event = MaybeUninit::<sys::yaml_event_t>::uninit();
        // SAFETY: parse fills `event` on success; it is read, converted to owned data, and
        // deleted before returning. The union member read matches the event's type.
        unsafe {
            let p = self.sys.as_mut_ptr();
            if sys::yaml_parser_parse(p, event.as_mut_ptr()).fail {
                return Err(self.error());
            }
            let e = &*event.as_ptr();
            let converted = match e.type_ {
                sys::YAML_STREAM_END_EVENT => Event::StreamEnd,
                sys::YAML_DOCUMENT_START_EVENT => Event::DocumentStart,
                sys::YAML_ALIAS_EVENT => Event::Alias,
                sys::YAML_SCALAR_EVENT => {
                    let s = e.data.scalar;
                    let bytes = std::slice::from_raw_parts(s.value, s.length as usize);
                    Event::Scalar {
                        value: String::from_utf8_lossy(bytes).into_owned(),
                        style: match s.style {
                            sys::YAML_SINGLE_QUOTED_SCALAR_STYLE => Style::SingleQuoted,
                            sys::YAML_DOUBLE_QUOTED_SCALAR_STYLE => Style::DoubleQuoted,
                            sys::YAML_LITERAL_SCALAR_STYLE | sys::YAML_FOLDED_SCALAR_STYLE => {
                                Style::Block
                            }
                            _ => Style::Plain,
                        },
                    }
                }
                sys::YAML_SEQUENCE_START_EVENT => Event::SequenceStart,
                sys::YAML_SEQUENCE_END_EVENT => Event::SequenceEnd,
                sys::YAML_MAPPING_START_EVENT => Event::MappingStart,
                sys::YAML_MAPPING_END_EVENT => Event::MappingEnd,
                _ => Event::Other,
            };
            let marks = (Mark::from_sys(e.start_mark), Mark::from_sys(e.end_mark));
            sys::yaml_event_delete(event.as_mut_ptr());
            Ok((converted, marks.0, marks.1))
        }
    }
}

impl Drop for Parser<'_> {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`; deleted once.
        unsafe { sys::yaml_parser_delete(self.sys.as_mut_ptr()) }
    }
}

/// A container being walked.
enum Frame {
    Map {
        path: Vec<Seg>,
        /// The key just read, waiting for its value.
        key: Option<(String, Mark)>,
        /// Keys seen so far, with where.
        seen: HashMap<String, Mark>,
    },
    Seq {
        path: Vec<Seg>,
        next: usize,
    },
    /// A mapping or sequence used as a key: skipped (rule files have none).
    SkipKey {
        depth: usize,
    },
}

/// Indexes the first document of `text`. A second document is an error (a rule file holds
/// one rule set).
pub fn index(text: &str) -> Result<Positions, SyntaxError> {
    let lines: Vec<&str> = text.lines().collect();
    let mut parser = Parser::new(text.as_bytes());
    let mut positions = Positions::default();
    let mut stack: Vec<Frame> = Vec::new();
    let mut documents = 0;
    loop {
        let (event, start, end) = parser.next()?;
        if skip_in_key(&mut stack, &event) {
            continue;
        }
        let style = match &event {
            Event::StreamEnd => return Ok(positions),
            Event::DocumentStart => {
                documents += 1;
                if documents > 1 {
                    return Err(SyntaxError {
                        mark: start,
                        message: "a rule file holds one YAML document; found a second one".into(),
                    });
                }
                continue;
            }
            Event::MappingEnd | Event::SequenceEnd => {
                stack.pop();
                continue;
            }
            Event::Other => continue,
            Event::Scalar { style, .. } => *style,
            Event::Alias => Style::Alias,
            Event::MappingStart => Style::Mapping,
            Event::SequenceStart => Style::Sequence,
        };
        let Some((path, key)) = node_path(&mut stack, &event, start)? else {
            continue;
        };
        let source = match &event {
            Event::Scalar { .. } if start.line == end.line => lines.get(start.line - 1).map(|l| {
                l.chars()
                    .skip(start.column - 1)
                    .take(end.column - start.column)
                    .collect()
            }),
            _ => None,
        };
        match event {
            Event::MappingStart => stack.push(Frame::Map {
                path: path.clone(),
                key: None,
                seen: HashMap::new(),
            }),
            Event::SequenceStart => stack.push(Frame::Seq {
                path: path.clone(),
                next: 0,
            }),
            _ => {}
        }
        positions.nodes.insert(
            path,
            Span {
                key,
                start,
                end,
                style,
                source,
            },
        );
    }
}

/// A node's path and, for a mapping value, where its key is.
type NodePlace = (Vec<Seg>, Option<Mark>);

/// Inside a mapping or sequence used as a key: counts its depth and says to skip the event.
fn skip_in_key(stack: &mut Vec<Frame>, event: &Event) -> bool {
    let Some(Frame::SkipKey { depth }) = stack.last_mut() else {
        return false;
    };
    match event {
        Event::MappingStart | Event::SequenceStart => *depth += 1,
        Event::MappingEnd | Event::SequenceEnd => {
            *depth -= 1;
            if *depth == 0 {
                stack.pop();
            }
        }
        _ => {}
    }
    true
}

/// The path of a node and its key's place, or `None` when the node is itself a key (then it
/// is remembered, and a duplicate key is an error).
fn node_path(
    stack: &mut Vec<Frame>,
    event: &Event,
    start: Mark,
) -> Result<Option<NodePlace>, SyntaxError> {
    let frame = stack.last_mut();
    let mut skip_key = false;
    let out = match frame {
        None => Some((Vec::new(), None)),
        Some(Frame::Map { path, key, seen }) => match key.take() {
            Some((k, mark)) => {
                let mut p = path.clone();
                p.push(Seg::Key(k));
                Some((p, Some(mark)))
            }
            None => {
                let name = match event {
                    Event::Scalar { value, .. } => value.clone(),
                    _ => "?".to_string(),
                };
                if let Some(first) = seen.insert(name.clone(), start)
                    && name != "?"
                {
                    return Err(SyntaxError {
                        mark: start,
                        message: format!(
                            "duplicate key `{name}` (first at {}:{})",
                            first.line, first.column
                        ),
                    });
                }
                *key = Some((name, start));
                skip_key = matches!(event, Event::MappingStart | Event::SequenceStart);
                None
            }
        },
        Some(Frame::Seq { path, next }) => {
            let mut p = path.clone();
            p.push(Seg::Index(*next));
            *next += 1;
            Some((p, None))
        }
        Some(Frame::SkipKey { .. }) => unreachable!("skipped by skip_in_key"),
    };
    if skip_key {
        // A container used as a key: its events are skipped until it closes.
        stack.push(Frame::SkipKey { depth: 1 });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> Seg {
        Seg::Key(k.into())
    }

    #[test]
    fn indexes_keys_values_and_items() {
        let text = "name: x\nmetrics:\n  - name: a\n    bad: 'q{ {{selector}} }'\n  - {name: b, kind: gauge}\n";
        let p = index(text).unwrap();
        let bad = p.get(&[key("metrics"), Seg::Index(0), key("bad")]).unwrap();
        assert_eq!(bad.key, Some(Mark { line: 4, column: 5 }));
        assert_eq!(
            bad.start,
            Mark {
                line: 4,
                column: 10
            }
        );
        assert_eq!(bad.style, Style::SingleQuoted);
        // `{{` is at value offset 3: one column for the quote.
        assert_eq!(
            bad.at_offset(3),
            Mark {
                line: 4,
                column: 14
            }
        );
        let kind = p
            .get(&[key("metrics"), Seg::Index(1), key("kind")])
            .unwrap();
        assert_eq!(
            kind.start,
            Mark {
                line: 5,
                column: 21
            }
        );
        assert_eq!(
            p.get(&[key("metrics"), Seg::Index(1)])
                .unwrap()
                .start
                .column,
            5
        );
        assert_eq!(p.key(&[key("name")]), Mark { line: 1, column: 1 });
    }

    #[test]
    fn aliases_fall_back_to_the_alias() {
        let text = "a: &x {b: 1}\nc: *x\n";
        let p = index(text).unwrap();
        assert_eq!(p.value(&[key("c"), key("b")]), Mark { line: 2, column: 4 });
    }

    #[test]
    fn syntax_errors_have_places() {
        let e = index("a: [1\nb: 2\n").unwrap_err();
        assert!(
            e.message.contains("did not find expected ',' or ']'"),
            "{}",
            e.message
        );
        assert_eq!(e.mark.line, 2);
        let e = index("a: 1\n---\nb: 2\n").unwrap_err();
        assert_eq!(e.mark.line, 2);
    }

    #[test]
    fn single_quote_escapes_shift_columns() {
        let p = index("q: 'it''s {{x}}'\n").unwrap();
        let s = p.get(&[key("q")]).unwrap();
        // value "it's {{x}}": `{` at offset 5; source has one extra quote before it.
        assert_eq!(
            s.at_offset(5),
            Mark {
                line: 1,
                column: 4 + 1 + 6
            }
        );
    }
}
