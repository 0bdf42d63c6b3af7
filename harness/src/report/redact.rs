//! What a bundle must not carry: passwords, tokens, the user's home path and the host's name.
//! One [`Redactor`] is applied to every text file of a bundle (and byte-wise to the raw serial
//! log), so what is attached to a public bug report says nothing of the machine it came from
//! beyond its OS, CPU and accelerator.

use regex::bytes::{Regex, RegexBuilder};

/// What a home directory becomes.
pub const HOME: &str = "~";
/// What the host's name becomes.
pub const HOST: &str = "<host>";
/// What a secret value becomes.
pub const SECRET: &str = "<redacted>";

/// The rules, built once per bundle.
pub struct Redactor {
    /// `(pattern, replacement)`, applied in order.
    rules: Vec<(Regex, Vec<u8>)>,
}

/// A path character: a home path only starts after something that is not one (so a tree's
/// `.../debian-bullseye-.../root/usr` keeps its `root`).
const PATH_CHARS: &str = r"A-Za-z0-9._%+~/\-";

/// Whether `c` is one of [`PATH_CHARS`].
pub fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "._%+~/-".contains(c)
}

/// Where `path` occurs in `text` as the home rules of [`Redactor::new`] find a home: starting a
/// path (at the text's start or after a character that is not a path character) and ending at a
/// `/`, a character that is not a path character, or the text's end. `/root` is found in
/// `/root/x`, `file=/root` and `a:/root/b`, not in `.../tree/root/usr`, `/srv/root` or
/// `/rootfs`.
pub fn path_occurrences(text: &str, path: &str) -> Vec<usize> {
    if path.is_empty() {
        return Vec::new();
    }
    text.match_indices(path)
        .map(|(i, _)| i)
        .filter(|&i| {
            let before = text[..i].chars().next_back();
            let after = text[i + path.len()..].chars().next();
            !before.is_some_and(is_path_char) && after.is_none_or(|c| c == '/' || !is_path_char(c))
        })
        .collect()
}

fn re(s: &str) -> Regex {
    RegexBuilder::new(s)
        .unicode(false)
        .build()
        .expect("a redaction rule compiles")
}

impl Redactor {
    /// Rules for this machine: its home directory (`$HOME`) and any `/root`, `/home/NAME`,
    /// `/Users/NAME` path start, its host name (as a whole word, short name and FQDN), the given
    /// secrets (passwords read from `secrets.json` files), and token-like values (`password=`,
    /// `token:`, `Authorization:`, URL user information, well-known token formats).
    pub fn new(home: Option<&str>, hostnames: &[String], secrets: &[String]) -> Redactor {
        let mut rules: Vec<(Regex, Vec<u8>)> = Vec::new();
        for s in secrets.iter().filter(|s| s.len() >= 4) {
            rules.push((re(&regex::escape(s)), SECRET.into()));
        }
        // URL user information: scheme://user:pass@host
        rules.push((
            re(r"(?P<s>[A-Za-z][A-Za-z0-9+.\-]*://)[^/\s@:]+:[^/\s@]+@"),
            format!("$s{SECRET}@").into(),
        ));
        rules.push((
            re(r"(?i)(?P<k>\bbearer\s+)[A-Za-z0-9._~+/=\-]{8,}"),
            format!("$k{SECRET}").into(),
        ));
        rules.push((
            re(r"\b(?:gh[pousr]_[A-Za-z0-9]{20,}|glpat-[A-Za-z0-9_\-]{20,}|xox[abp]-[A-Za-z0-9\-]{10,}|AKIA[0-9A-Z]{16})\b"),
            SECRET.into(),
        ));
        rules.push((
            re(r#"(?i)(?P<k>\b(?:password|passwd|pwd|token|secret|api[_-]?key|access[_-]?key|auth[_-]?token|authorization|private[_-]?key)\b"?\s*[:=]\s*"?)(?P<v>[^\s"',;&]+)"#),
            format!("$k{SECRET}").into(),
        ));
        let mut homes: Vec<String> = Vec::new();
        if let Some(h) = home
            .map(|h| h.trim_end_matches('/'))
            .filter(|h| h.len() > 1)
        {
            homes.push(regex::escape(h));
        }
        homes.push("/root".into());
        homes.push(r"/home/[^/\s\x22':;,]+".into());
        homes.push(r"/Users/[^/\s\x22':;,]+".into());
        for h in homes {
            rules.push((
                re(&format!(
                    r"(?P<pre>^|[^{PATH_CHARS}])(?:{h})(?P<post>/|[^{PATH_CHARS}]|$)"
                )),
                format!("${{pre}}{HOME}${{post}}").into(),
            ));
        }
        let mut names: Vec<&String> = hostnames
            .iter()
            .filter(|h| h.len() >= 2 && h.as_str() != "localhost")
            .collect();
        // The longest first: the FQDN before its short name.
        names.sort_by_key(|h| std::cmp::Reverse(h.len()));
        for h in names {
            rules.push((
                re(&format!(
                    r"(?P<pre>^|[^A-Za-z0-9_.\-]){}(?P<post>[^A-Za-z0-9_\-]|\.[^A-Za-z0-9]|\.$|$)",
                    regex::escape(h)
                )),
                format!("${{pre}}{HOST}${{post}}").into(),
            ));
        }
        Redactor { rules }
    }

    /// Rules for the machine this runs on, plus the given secrets.
    pub fn for_this_host(secrets: &[String]) -> Redactor {
        let home = std::env::var("HOME").ok();
        let mut hosts = Vec::new();
        if let Ok(h) = nix::unistd::gethostname()
            && let Some(h) = h.to_str()
        {
            hosts.push(h.to_string());
            if let Some((short, _)) = h.split_once('.') {
                hosts.push(short.to_string());
            }
        }
        if let Ok(h) = std::fs::read_to_string("/etc/hostname") {
            let h = h.trim().to_string();
            if !h.is_empty() && !hosts.contains(&h) {
                hosts.push(h);
            }
        }
        Redactor::new(home.as_deref(), &hosts, secrets)
    }

    /// The bytes with every rule applied (each twice, so adjacent matches that shared a
    /// delimiter are caught too).
    pub fn apply(&self, bytes: &[u8]) -> Vec<u8> {
        let mut out = bytes.to_vec();
        for (r, with) in &self.rules {
            for _ in 0..2 {
                if r.is_match(&out) {
                    out = r.replace_all(&out, with.as_slice()).into_owned();
                }
            }
        }
        out
    }

    pub fn apply_str(&self, s: &str) -> String {
        String::from_utf8_lossy(&self.apply(s.as_bytes())).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r() -> Redactor {
        Redactor::new(
            Some("/home/alice"),
            &["build-7.example.org".into(), "build-7".into()],
            &["hunter2hunter2".into()],
        )
    }

    /// [`is_path_char`] is the class the rules use.
    #[test]
    fn path_chars_agree_with_the_rules() {
        let class = re(&format!("^[{PATH_CHARS}]$"));
        for b in 0u8..128 {
            assert_eq!(
                class.is_match(&[b]),
                is_path_char(b as char),
                "{:?}",
                b as char
            );
        }
        let r = Redactor::new(Some("/root"), &[], &[]);
        for text in [
            "/root/x",
            "file=/root",
            "a:/root/b",
            "/x/root/usr",
            "/srv/root",
            "/rootfs",
        ] {
            let redacted = r.apply_str(text) != text;
            assert_eq!(
                redacted,
                !path_occurrences(text, "/root").is_empty(),
                "{text}"
            );
        }
        assert_eq!(
            path_occurrences("/root:/root/root/rootfs", "/root"),
            vec![0, 6]
        );
        assert!(path_occurrences("x", "").is_empty());
    }

    #[test]
    fn homes_hosts_and_secrets_go() {
        let r = r();
        let cases = [
            ("/home/alice/.cache/x", "~/.cache/x"),
            (
                "\"/root/.cache/bootwatch/qemu/debian-bullseye/root/usr/bin/qemu\"",
                "\"~/.cache/bootwatch/qemu/debian-bullseye/root/usr/bin/qemu\"",
            ),
            ("path=/root", "path=~"),
            ("/home/bob/x:/home/carol/y", "~/x:~/y"),
            ("host build-7 said", "host <host> said"),
            ("on build-7.example.org.", "on <host>."),
            ("build-7x stays", "build-7x stays"),
            ("pw hunter2hunter2!", "pw <redacted>!"),
            ("password=abc123 x", "password=<redacted> x"),
            ("\"token\": \"abcdef\"", "\"token\": \"<redacted>\""),
            (
                "http://u:p4ss@mirror/debian",
                "http://<redacted>@mirror/debian",
            ),
            (
                "Authorization: Bearer abcdefghijkl",
                "Authorization: <redacted> <redacted>",
            ),
            ("key ghp_0123456789abcdefghijABCDEFGHIJ", "key <redacted>"),
            (
                "/usr/share/AAVMF/AAVMF_CODE.fd",
                "/usr/share/AAVMF/AAVMF_CODE.fd",
            ),
            ("Password: \n", "Password: \n"),
        ];
        for (input, want) in cases {
            assert_eq!(r.apply_str(input), want, "{input}");
        }
    }
}
