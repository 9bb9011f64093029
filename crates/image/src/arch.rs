//! Architecture names as LXD's `shared/osarch` knows them: a canonical name per
//! architecture plus the aliases distributions use (amd64, arm64, ...).

/// Canonical name first, then the names accepted for it. Matching is exact and
/// case-sensitive, as in LXD.
const ARCHITECTURES: &[(&str, &[&str])] = &[
    ("i686", &["i386", "i586", "386", "x86", "generic_32"]),
    (
        "x86_64",
        &[
            "amd64",
            "generic_64",
            "x86_64_v1",
            "x86_64_v2",
            "x86_64_v3",
            "x86_64_v4",
            "amd64v3",
        ],
    ),
    ("armv6l", &["armel", "arm"]),
    (
        "armv7l",
        &[
            "armhf",
            "armhfp",
            "armv7a_hardfp",
            "armv7",
            "armv7a_vfpv3_hardfp",
        ],
    ),
    ("armv8l", &[]),
    ("aarch64", &["arm64", "arm64_generic"]),
    ("ppc", &["powerpc"]),
    ("ppc64", &["powerpc64"]),
    ("ppc64le", &["ppc64el"]),
    ("s390x", &[]),
    ("mips", &["mipsel", "mipsle"]),
    ("mips64", &["mips64el", "mips64le"]),
    ("riscv32", &[]),
    ("riscv64", &[]),
    ("loongarch64", &["loong64"]),
];

/// The canonical name for `name` (e.g. `amd64` → `x86_64`), or `None` when LXD
/// would answer "Architecture isn't supported".
pub fn canonical_architecture(name: &str) -> Option<&'static str> {
    ARCHITECTURES
        .iter()
        .find(|(canonical, aliases)| *canonical == name || aliases.contains(&name))
        .map(|(canonical, _)| *canonical)
}

/// The Debian name of a canonical architecture (`x86_64` → `amd64`), which
/// simplestreams products use; the canonical name where Debian has none.
pub fn debian_architecture(canonical: &str) -> &str {
    match canonical {
        "i686" => "i386",
        "x86_64" => "amd64",
        "armv6l" => "armel",
        "armv7l" => "armhf",
        "aarch64" => "arm64",
        "ppc" => "powerpc",
        "ppc64le" => "ppc64el",
        "mips" => "mipsel",
        "mips64" => "mips64el",
        "loongarch64" => "loong64",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_map_to_canonical_names() {
        assert_eq!(canonical_architecture("amd64"), Some("x86_64"));
        assert_eq!(canonical_architecture("x86_64"), Some("x86_64"));
        assert_eq!(canonical_architecture("arm64"), Some("aarch64"));
        assert_eq!(canonical_architecture("ppc64el"), Some("ppc64le"));
    }

    #[test]
    fn debian_names_map_back_to_the_same_architecture() {
        for (canonical, _) in ARCHITECTURES {
            let debian = debian_architecture(canonical);
            assert_eq!(canonical_architecture(debian), Some(*canonical), "{debian}");
        }
        assert_eq!(debian_architecture("x86_64"), "amd64");
    }

    #[test]
    fn unknown_and_wrong_case_names_are_refused() {
        assert_eq!(canonical_architecture("sparc"), None);
        assert_eq!(canonical_architecture("AMD64"), None);
        assert_eq!(canonical_architecture(""), None);
    }
}
