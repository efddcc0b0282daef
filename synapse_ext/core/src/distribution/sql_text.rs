//! SQL text that synapse sends to other nodes, as PostgreSQL's deparser prints it.

/// `sql` on one line: every run of white space outside quoted literals and identifiers
/// becomes one space (the deparser indents its output over several lines). Quoted text
/// (`'...'`, `E'...'`, `"..."`, with doubled quotes and, in `E''`, backslash escapes)
/// is kept byte for byte, so the statement means exactly what it meant.
pub fn one_line(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    let mut pending_space = false;
    let mut prev: Option<char> = None;
    while let Some(c) = chars.next() {
        if c.is_whitespace() {
            pending_space = !out.is_empty();
            continue;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        out.push(c);
        if c == '\'' || c == '"' {
            // E'...' strings take backslash escapes.
            let escapes = c == '\'' && matches!(prev, Some('E') | Some('e'));
            while let Some(d) = chars.next() {
                out.push(d);
                if escapes && d == '\\' {
                    if let Some(e) = chars.next() {
                        out.push(e);
                    }
                    continue;
                }
                if d == c {
                    // A doubled quote stays inside the literal.
                    if chars.peek() == Some(&c) {
                        out.push(chars.next().unwrap());
                        continue;
                    }
                    break;
                }
            }
            prev = Some(c);
            continue;
        }
        prev = Some(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn white_space_collapses_outside_quotes() {
        assert_eq!(
            one_line(" SELECT g,\n     count(*)\n    FROM public.t\n   GROUP BY g"),
            "SELECT g, count(*) FROM public.t GROUP BY g"
        );
    }

    #[test]
    fn quoted_text_is_kept() {
        let sql = "SELECT 'a  b\n c', \"odd  name\" FROM t WHERE s = 'it''s   x'";
        assert_eq!(one_line(sql), sql);
        let sql = "SELECT E'x\\'  y', 'z'";
        assert_eq!(one_line(sql), sql);
        assert_eq!(one_line("SELECT  'a''  '  ,   1"), "SELECT 'a''  ' , 1");
    }
}
