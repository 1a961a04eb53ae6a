//! Where a key is in the TOML text: a parse error's span turned into a line, column and
//! dotted key path, and a validation problem given the line that sets its key.

/// `problem` with ` (line N)` appended when a key it names (the first one the file sets)
/// is set on line N of `src`.
pub(super) fn with_line(src: &str, problem: String) -> String {
    let line = problem
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '['))
        .map(|w| w.split('[').next().unwrap_or(w))
        .filter(|w| w.contains('.') && !w.starts_with('.') && !w.ends_with('.'))
        .find_map(|key| line_of_key(src, key));
    match line {
        Some(n) => format!("{problem} (line {n})"),
        None => problem,
    }
}

/// The 1-based line that sets the dotted `key` (`tcp.max_connections`) in `src`: `name =`
/// under its table header, or the whole dotted key at the top level.
fn line_of_key(src: &str, key: &str) -> Option<usize> {
    let (table, name) = key.rsplit_once('.')?;
    let mut current = "";
    for (i, line) in src.lines().enumerate() {
        if let Some(h) = table_header(line) {
            current = h;
            continue;
        }
        let wanted = if current == table {
            name
        } else if current.is_empty() {
            key
        } else {
            continue;
        };
        let t = line.trim_start();
        if t.strip_prefix(wanted)
            .is_some_and(|rest| rest.trim_start().starts_with('='))
        {
            return Some(i + 1);
        }
    }
    None
}

/// 1-based line and column (in characters) of byte `offset` in `src`.
pub(super) fn line_column(src: &str, offset: usize) -> (usize, usize) {
    let offset = floor_char_boundary(src, offset);
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The dotted key path at `span` in `src`: the enclosing `[table]` header, the key at the
/// start of the line, and the innermost key of an inline table on that line.
pub(super) fn key_path_at(src: &str, span: std::ops::Range<usize>) -> String {
    let start = floor_char_boundary(src, span.start);
    let end = floor_char_boundary(src, span.end.max(start));
    let line_start = src[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = src[start..].find('\n').map_or(src.len(), |i| start + i);
    let line = &src[line_start..line_end];
    if let Some(h) = table_header(line) {
        return h.to_owned();
    }
    let header = src[..line_start]
        .lines()
        .rev()
        .find_map(table_header)
        .unwrap_or("");
    // The line up to the end of the span, plus an `=` right after it (when the span is a key).
    let mut upto = end.min(line_end);
    let rest = &src[upto..line_end];
    let trimmed = rest.trim_start();
    if trimmed.starts_with('=') {
        upto += rest.len() - trimmed.len() + 1;
    }
    let keys = keys_before_equals(&src[line_start..upto]);
    let mut parts: Vec<&str> = Vec::new();
    if !header.is_empty() {
        parts.push(header);
    }
    if let (Some(first), Some(last)) = (keys.first(), keys.last()) {
        parts.push(first);
        if keys.len() > 1 {
            parts.push(last);
        }
    }
    if parts.is_empty() {
        "(top level)".to_owned()
    } else {
        parts.join(".")
    }
}

/// `name` if `line` is a table header `[name]` or `[[name]]` (with an optional comment).
fn table_header(line: &str) -> Option<&str> {
    let t = line.trim();
    let inner = t.strip_prefix('[')?;
    let inner = inner.strip_prefix('[').unwrap_or(inner);
    let close = inner.find(']')?;
    let name = inner[..close].trim();
    let after = inner[close..].trim_start_matches(']').trim_start();
    let valid_name = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '"' | '\'' | ' '));
    (valid_name && (after.is_empty() || after.starts_with('#'))).then_some(name)
}

/// The keys written as `key =` in `text`, outside strings, in order.
fn keys_before_equals(text: &str) -> Vec<&str> {
    let mut keys = Vec::new();
    let mut in_str: Option<char> = None;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        if let Some(q) = in_str {
            if escaped {
                escaped = false;
            } else if c == '\\' && q == '"' {
                escaped = true;
            } else if c == q {
                in_str = None;
            }
            continue;
        }
        match c {
            '"' | '\'' => in_str = Some(c),
            '#' => break,
            '=' => {
                let before = text[..i].trim_end();
                let key_start = before
                    .rfind(|c: char| !(c.is_alphanumeric() || matches!(c, '_' | '-' | '.')))
                    .map_or(0, |j| j + 1);
                let key = &before[key_start..];
                if !key.is_empty() {
                    keys.push(key);
                }
            }
            _ => {}
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_paths() {
        let src = "[tcp]\nmax_frame_len = 10\n[pipeline]\nalert_rules = [{ topic = \"a=b\", when = \"x\" }]\n";
        let at = |needle: &str| {
            let s = src.find(needle).unwrap();
            key_path_at(src, s..s + needle.len())
        };
        assert_eq!(at("10"), "tcp.max_frame_len");
        assert_eq!(at("max_frame_len"), "tcp.max_frame_len");
        assert_eq!(at("\"x\""), "pipeline.alert_rules.when");
        assert_eq!(at("[pipeline]"), "pipeline");
        assert_eq!(key_path_at("a = 1", 4..5), "a");
        assert_eq!(line_column("ab\ncé\nx", 7), (3, 1));
        assert_eq!(line_column("ab\ncéx", 6), (2, 3));
    }

    #[test]
    fn problems_name_the_line_of_their_key() {
        let src =
            "[engine]\nack = \"none\"\n[tcp]\n# max_connections = 1\nmax_connections  = 9000\n";
        assert_eq!(line_of_key(src, "tcp.max_connections"), Some(5));
        assert_eq!(line_of_key(src, "engine.max_connections"), None);
        assert_eq!(
            line_of_key("tcp.max_connections = 1\n", "tcp.max_connections"),
            Some(1)
        );
        assert_eq!(
            with_line(src, "tcp.max_connections = 9000: must be 1 ..= 4095".into()),
            "tcp.max_connections = 9000: must be 1 ..= 4095 (line 5)"
        );
        // The first key the file sets.
        assert_eq!(
            with_line(
                src,
                "tcp.recv_buffer = 1: must be at least tcp.max_connections".into()
            ),
            "tcp.recv_buffer = 1: must be at least tcp.max_connections (line 5)"
        );
        assert_eq!(with_line(src, "udp.batch = 0".into()), "udp.batch = 0");
    }

    #[test]
    fn headers() {
        assert_eq!(table_header("[tcp]"), Some("tcp"));
        assert_eq!(table_header("  [[a.b]] # c"), Some("a.b"));
        assert_eq!(table_header("[1, 2],"), None);
        assert_eq!(table_header("x = [1]"), None);
    }
}
