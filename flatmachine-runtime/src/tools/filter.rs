//! Allow and deny lists of tool names: a state's `allowed_tools` / `denied_tools` and an MCP
//! section's `tool_filter`.

/// Whether `pattern` names the tool `name` (offered by MCP server `server`, if any).
///
/// A pattern with a `:` is matched against the qualified name `server:name` (so it never
/// matches a tool without a server); one without is matched against the bare name. `*`
/// matches any run of characters: `fs:*` is every tool of server `fs`, `*:read_*` every tool
/// whose name starts with `read_` on any server, `*` everything.
pub fn matches_pattern(pattern: &str, name: &str, server: Option<&str>) -> bool {
    if pattern.contains(':') {
        match server {
            Some(server) => glob(pattern, &format!("{server}:{name}")),
            None => false,
        }
    } else {
        glob(pattern, name)
    }
}

/// `*`-only glob matching (no other special characters).
fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Classic two-pointer match with backtracking to the last `*`.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// An allow list and a deny list (deny wins; an empty allow list allows everything).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolFilter {
    /// Patterns of tools to offer (empty: all).
    pub allow: Vec<String>,
    /// Patterns of tools never to offer or run.
    pub deny: Vec<String>,
}

impl ToolFilter {
    /// A filter with these lists.
    pub fn new<I, J, S, T>(allow: I, deny: J) -> Self
    where
        I: IntoIterator<Item = S>,
        J: IntoIterator<Item = T>,
        S: Into<String>,
        T: Into<String>,
    {
        Self {
            allow: allow.into_iter().map(Into::into).collect(),
            deny: deny.into_iter().map(Into::into).collect(),
        }
    }

    /// Whether the tool passes: no deny pattern matches, and the allow list is empty or one of
    /// its patterns matches.
    pub fn permits(&self, name: &str, server: Option<&str>) -> bool {
        if self.deny.iter().any(|p| matches_pattern(p, name, server)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|p| matches_pattern(p, name, server))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_and_qualified_patterns() {
        assert!(matches_pattern("read_file", "read_file", Some("fs")));
        assert!(matches_pattern("read_file", "read_file", None));
        assert!(matches_pattern("fs:read_file", "read_file", Some("fs")));
        assert!(!matches_pattern("fs:read_file", "read_file", None));
        assert!(!matches_pattern("git:read_file", "read_file", Some("fs")));
        assert!(matches_pattern("fs:*", "anything", Some("fs")));
        assert!(matches_pattern("*:read_*", "read_dir", Some("x")));
        assert!(!matches_pattern("*:read_*", "write", Some("x")));
        assert!(matches_pattern("*", "x", None));
        assert!(matches_pattern("a*b*c", "aXXbYYc", None));
        assert!(!matches_pattern("a*b*c", "aXXbYY", None));
    }

    #[test]
    fn deny_wins_over_allow() {
        let f = ToolFilter::new(["fs:*"], ["fs:delete_*"]);
        assert!(f.permits("read", Some("fs")));
        assert!(!f.permits("delete_all", Some("fs")));
        assert!(!f.permits("read", Some("git")));
        let open = ToolFilter::new(Vec::<String>::new(), ["shell"]);
        assert!(open.permits("read", None));
        assert!(!open.permits("shell", None));
    }
}
