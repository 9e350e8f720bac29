//! Source files the compiler read, and byte spans into them.

use std::path::{Path, PathBuf};

/// Index of a file in a [`SourceDb`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId(pub u32);

/// A byte range in one source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Span {
    /// The file the range is in.
    pub file: FileId,
    /// First byte.
    pub start: usize,
    /// One past the last byte (equal to `start` for a point).
    pub end: usize,
}

impl Span {
    /// A span of `len` bytes starting at `start`.
    pub fn new(file: FileId, start: usize, end: usize) -> Self {
        Self { file, start, end }
    }

    /// The sub-span `offset..offset+len` inside this span (clamped to it).
    pub fn sub(self, offset: usize, len: usize) -> Span {
        let start = (self.start + offset).min(self.end.max(self.start));
        let end = (start + len).min(self.end.max(start));
        Span {
            file: self.file,
            start,
            end,
        }
    }
}

/// One file read by the compiler.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// Path as given to the compiler (absolute or relative to the working directory).
    pub path: PathBuf,
    /// Path as shown in diagnostics.
    pub display: String,
    /// The file's text.
    pub text: String,
    line_starts: Vec<usize>,
    /// Byte offset of every [`CHAR_STRIDE`]-th character; empty for ASCII text (where character
    /// and byte offsets are equal).
    char_marks: Vec<usize>,
}

/// Characters between two entries of [`SourceFile::char_marks`]: `byte_of_char` walks at most
/// this many characters, and the table takes an eighth of the text's size at most.
const CHAR_STRIDE: usize = 64;

impl SourceFile {
    /// A source file from its path, display name and text.
    pub fn new(path: PathBuf, display: String, text: String) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        let char_marks = if text.is_ascii() {
            Vec::new()
        } else {
            text.char_indices()
                .step_by(CHAR_STRIDE)
                .map(|(b, _)| b)
                .collect()
        };
        Self {
            path,
            display,
            text,
            line_starts,
            char_marks,
        }
    }

    /// 1-based line and 1-based column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i - 1,
        };
        let start = self.line_starts[line];
        let col = self
            .text
            .get(start..offset)
            .map(|s| s.chars().count())
            .unwrap_or(offset - start);
        (line + 1, col + 1)
    }

    /// Byte offset of a character index (saphyr reports positions in characters). Constant
    /// time: at most `CHAR_STRIDE` characters are walked.
    pub fn byte_of_char(&self, char_index: usize) -> usize {
        if self.char_marks.is_empty() {
            return char_index.min(self.text.len());
        }
        let Some(&mark) = self.char_marks.get(char_index / CHAR_STRIDE) else {
            return self.text.len();
        };
        self.text[mark..]
            .char_indices()
            .nth(char_index % CHAR_STRIDE)
            .map(|(b, _)| mark + b)
            .unwrap_or(self.text.len())
    }

    /// Byte offset of the start of a 1-based line (the end of the text past the last line).
    pub fn line_start(&self, line: usize) -> usize {
        self.line_starts
            .get(line.saturating_sub(1))
            .copied()
            .unwrap_or(self.text.len())
    }
}

/// All files read during one compilation.
#[derive(Debug, Default, Clone)]
pub struct SourceDb {
    files: Vec<SourceFile>,
}

impl SourceDb {
    /// An empty database.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a file; returns its id.
    pub fn add(&mut self, path: PathBuf, display: String, text: String) -> FileId {
        let id = FileId(self.files.len() as u32);
        self.files.push(SourceFile::new(path, display, text));
        id
    }

    /// The file with this id.
    pub fn file(&self, id: FileId) -> &SourceFile {
        &self.files[id.0 as usize]
    }

    /// The id of an already-added file with this path.
    pub fn find(&self, path: &Path) -> Option<FileId> {
        self.files
            .iter()
            .position(|f| f.path == path)
            .map(|i| FileId(i as u32))
    }

    /// Every file read, in the order they were read.
    pub fn files(&self) -> impl Iterator<Item = (FileId, &SourceFile)> {
        self.files
            .iter()
            .enumerate()
            .map(|(i, f)| (FileId(i as u32), f))
    }

    /// `file:line:col` of a span's start.
    pub fn location(&self, span: Span) -> String {
        let f = self.file(span.file);
        let (line, col) = f.line_col(span.start);
        format!("{}:{}:{}", f.display, line, col)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_of_char_matches_a_plain_walk() {
        let text: String = (0..1000)
            .map(|i| match i % 7 {
                0 => 'é',
                3 => '😀',
                _ => 'a',
            })
            .collect();
        let f = SourceFile::new("t".into(), "t".into(), text.clone());
        for (i, (b, _)) in text.char_indices().enumerate() {
            assert_eq!(f.byte_of_char(i), b, "char {i}");
        }
        let n = text.chars().count();
        assert_eq!(f.byte_of_char(n), text.len());
        assert_eq!(f.byte_of_char(n + 100), text.len());
        let ascii = SourceFile::new("t".into(), "t".into(), "abc".into());
        assert_eq!(ascii.byte_of_char(2), 2);
        assert_eq!(ascii.byte_of_char(9), 3);
    }
}
