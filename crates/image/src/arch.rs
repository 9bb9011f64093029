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
    fn unknown_and_wrong_case_names_are_refused() {
        assert_eq!(canonical_architecture("sparc"), None);
        assert_eq!(canonical_architecture("AMD64"), None);
        assert_eq!(canonical_architecture(""), None);
    }
}
