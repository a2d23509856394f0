//! The plan: which selected images must be copied and which are already in sync.
//! Everything here is a pure function of the selection and of what the two registries
//! reported (tag listings and manifest digests); the IO happens in [`crate::images::sync`].

use crate::images::reference::Digest;
use crate::images::registry::{Location, ManifestInfo};
use crate::images::selection::{Entry, TagSpec};
use crate::retry::{ErrorClass, ItemError};
use std::collections::{HashMap, HashSet};
use std::fmt;

/// One image at one registry: `host/repo:tag`, `host/repo@digest` or both.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageName {
    pub host: String,
    pub repo: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl ImageName {
    /// What to ask the registry for: the digest when pinned, else the tag.
    pub fn reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".into(),
        }
    }
}

impl fmt::Display for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.host, self.repo)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// One image to bring over.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Wanted {
    pub source: ImageName,
    /// Destination: tagged when the source had a tag, digest-only for a digest-only line.
    pub dest: ImageName,
}

/// A selected item that could not even be planned (bad line, failed listing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unplannable {
    /// What the user wrote or what was being listed.
    pub what: String,
    pub dest: Option<String>,
    pub error: ItemError,
}

/// Tag listings per `(host, repo)`, as the source registry answered.
pub type TagListings = HashMap<(String, String), Result<Vec<String>, ItemError>>;

/// Source `(host, repo)` of an entry: the line's own host, else `--source` with its prefix.
pub fn entry_source(entry: &Entry, source: &Location) -> (String, String) {
    match &entry.registry {
        Some(h) => (h.clone(), docker_hub_path(h, &entry.path)),
        None => (
            source.host.clone(),
            docker_hub_path(&source.host, &source.join(&entry.path)),
        ),
    }
}

fn docker_hub_path(host: &str, path: &str) -> String {
    let hub = matches!(
        host,
        "docker.io" | "index.docker.io" | "registry-1.docker.io"
    );
    if hub && !path.contains('/') {
        format!("library/{path}")
    } else {
        path.to_string()
    }
}

/// Expands list entries into images. `ALL_TAGS` takes the tags from `tags`; an entry whose
/// listing failed becomes an [`Unplannable`]. The destination repository is the path as
/// written, under the destination prefix. Duplicates are merged.
pub fn expand_entries(
    entries: &[Entry],
    source: &Location,
    dest: &Location,
    tags: &TagListings,
) -> (Vec<Wanted>, Vec<Unplannable>) {
    let mut wanted = Vec::new();
    let mut failed = Vec::new();
    for e in entries {
        let (host, repo) = entry_source(e, source);
        let dest_repo = dest.join(&e.path);
        let name = |tag: Option<String>, digest: Option<Digest>| ImageName {
            host: host.clone(),
            repo: repo.clone(),
            tag,
            digest,
        };
        let to = |tag: Option<String>, digest: Option<Digest>| ImageName {
            host: dest.host.clone(),
            repo: dest_repo.clone(),
            tag,
            digest,
        };
        match &e.spec {
            TagSpec::Tag(t) => wanted.push(Wanted {
                source: name(Some(t.clone()), None),
                dest: to(Some(t.clone()), None),
            }),
            TagSpec::Digest { digest, tag } => wanted.push(Wanted {
                source: name(tag.clone(), Some(digest.clone())),
                dest: match tag {
                    Some(t) => to(Some(t.clone()), None),
                    None => to(None, Some(digest.clone())),
                },
            }),
            TagSpec::AllTags => match tags.get(&(host.clone(), repo.clone())) {
                Some(Ok(list)) => {
                    for t in list {
                        wanted.push(Wanted {
                            source: name(Some(t.clone()), None),
                            dest: to(Some(t.clone()), None),
                        });
                    }
                }
                Some(Err(err)) => failed.push(Unplannable {
                    what: e.text.clone(),
                    dest: Some(format!("{}/{}", dest.host, dest_repo)),
                    error: err.clone(),
                }),
                None => failed.push(Unplannable {
                    what: e.text.clone(),
                    dest: Some(format!("{}/{}", dest.host, dest_repo)),
                    error: ItemError::new(
                        ErrorClass::NotFound,
                        format!("no tag listing for {host}/{repo}"),
                    ),
                }),
            },
        }
    }
    let (wanted, collided) = refuse_dest_collisions(dedup(wanted));
    failed.extend(collided);
    (wanted, failed)
}

/// Two sources never land on one destination tag: when several images map to the same
/// tagged destination (`quay.io/org/app:1` and `docker.io/org/app:1` under one prefix), the
/// first keeps it and every later one fails with an error naming both. Digest-only
/// destinations cannot conflict (the same digest is the same content).
pub fn refuse_dest_collisions(wanted: Vec<Wanted>) -> (Vec<Wanted>, Vec<Unplannable>) {
    let mut first: HashMap<ImageName, ImageName> = HashMap::new();
    let mut kept = Vec::new();
    let mut failed = Vec::new();
    for w in wanted {
        if w.dest.tag.is_none() {
            kept.push(w);
            continue;
        }
        match first.get(&w.dest) {
            Some(earlier) if *earlier != w.source => failed.push(Unplannable {
                what: w.source.to_string(),
                dest: Some(w.dest.to_string()),
                error: ItemError::new(
                    ErrorClass::BadInput,
                    format!(
                        "destination conflict: {} and {earlier} both map to {}; {earlier} (selected first) is copied there, {} is not (give one of them another destination)",
                        w.source, w.dest, w.source
                    ),
                ),
            }),
            Some(_) => {}
            None => {
                first.insert(w.dest.clone(), w.source.clone());
                kept.push(w);
            }
        }
    }
    (kept, failed)
}

/// Expands `--all-repos`: every repository under the source prefix, every tag, mapped
/// under the destination prefix.
pub fn expand_all_repos(
    repos: &[String],
    source: &Location,
    dest: &Location,
    tags: &TagListings,
) -> (Vec<Wanted>, Vec<Unplannable>) {
    let mut wanted = Vec::new();
    let mut failed = Vec::new();
    let mut sorted: Vec<&String> = repos.iter().collect();
    sorted.sort();
    for repo in sorted {
        let Some(below) = source.strip(repo) else {
            continue;
        };
        let dest_repo = dest.join(below);
        match tags.get(&(source.host.clone(), repo.clone())) {
            Some(Ok(list)) => {
                for t in list {
                    wanted.push(Wanted {
                        source: ImageName {
                            host: source.host.clone(),
                            repo: repo.clone(),
                            tag: Some(t.clone()),
                            digest: None,
                        },
                        dest: ImageName {
                            host: dest.host.clone(),
                            repo: dest_repo.clone(),
                            tag: Some(t.clone()),
                            digest: None,
                        },
                    });
                }
            }
            Some(Err(err)) => failed.push(Unplannable {
                what: format!("{}/{repo}", source.host),
                dest: Some(format!("{}/{dest_repo}", dest.host)),
                error: err.clone(),
            }),
            None => failed.push(Unplannable {
                what: format!("{}/{repo}", source.host),
                dest: Some(format!("{}/{dest_repo}", dest.host)),
                error: ItemError::new(
                    ErrorClass::NotFound,
                    format!("no tag listing for {}/{repo}", source.host),
                ),
            }),
        }
    }
    (dedup(wanted), failed)
}

fn dedup(v: Vec<Wanted>) -> Vec<Wanted> {
    let mut seen = HashSet::new();
    v.into_iter().filter(|w| seen.insert(w.clone())).collect()
}

/// What a manifest HEAD returned: present with a digest, absent, or an error.
pub type Observation = Result<Option<ManifestInfo>, ItemError>;

/// The decision for one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Missing at the destination or a different digest there.
    Copy,
    /// Same digest on both sides: nothing to do.
    Skip,
    /// Cannot be copied (source missing, auth refused, …).
    Fail(ItemError),
    /// The destination tag holds another image and is left alone (`--no-overwrite`).
    Conflict(ItemError),
}

/// One planned image with what each side reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanItem {
    pub wanted: Wanted,
    pub source: Option<ManifestInfo>,
    pub dest: Option<ManifestInfo>,
    pub action: Action,
}

/// Decides each image from the two observations: equal digests → skip; missing or
/// different at the destination → copy; source missing or any error → fail.
pub fn plan(
    wanted: &[Wanted],
    source: &HashMap<ImageName, Observation>,
    dest: &HashMap<ImageName, Observation>,
) -> Vec<PlanItem> {
    let missing = |side: &str, n: &ImageName| {
        ItemError::new(
            ErrorClass::Retryable,
            format!("no {side} observation for {n}"),
        )
    };
    wanted
        .iter()
        .map(|w| {
            let s = source
                .get(&w.source)
                .cloned()
                .unwrap_or_else(|| Err(missing("source", &w.source)));
            let d = dest
                .get(&w.dest)
                .cloned()
                .unwrap_or_else(|| Err(missing("destination", &w.dest)));
            let (source_info, dest_info, action) = match (s, d) {
                (Err(e), d) => (None, d.ok().flatten(), Action::Fail(e)),
                (Ok(None), d) => (
                    None,
                    d.ok().flatten(),
                    Action::Fail(ItemError::new(
                        ErrorClass::NotFound,
                        format!("{} does not exist at the source", w.source),
                    )),
                ),
                (Ok(Some(si)), Err(e)) => (Some(si), None, Action::Fail(e)),
                (Ok(Some(si)), Ok(di)) => {
                    let pinned_mismatch = w
                        .source
                        .digest
                        .as_ref()
                        .is_some_and(|want| *want != si.digest);
                    let action = if pinned_mismatch {
                        Action::Fail(ItemError::new(
                            ErrorClass::DigestMismatch,
                            format!("{} answered with digest {}", w.source, si.digest),
                        ))
                    } else if di.as_ref().is_some_and(|d| d.digest == si.digest) {
                        Action::Skip
                    } else {
                        Action::Copy
                    };
                    (Some(si), di, action)
                }
            };
            PlanItem {
                wanted: w.clone(),
                source: source_info,
                dest: dest_info,
                action,
            }
        })
        .collect()
}

/// `--no-overwrite`: a copy onto a destination tag that already holds another image becomes
/// a [`Action::Conflict`] naming both digests; the tag is left alone. Copies to a missing
/// tag, or to a digest-only destination (the digest is the content), stay copies.
pub fn keep_destination_tags(planned: Vec<PlanItem>) -> Vec<PlanItem> {
    planned
        .into_iter()
        .map(|mut p| {
            if p.action == Action::Copy
                && p.wanted.dest.tag.is_some()
                && let (Some(s), Some(d)) = (&p.source, &p.dest)
                && s.digest != d.digest
            {
                p.action = Action::Conflict(ItemError::new(
                    ErrorClass::Conflict,
                    format!(
                        "{} already holds {}; the source {} is {} (left alone: --no-overwrite)",
                        p.wanted.dest, d.digest, p.wanted.source, s.digest
                    ),
                ));
            }
            p
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::selection::parse_list;

    fn dg(n: u8) -> Digest {
        format!("sha256:{}", format!("{n:02x}").repeat(32))
            .parse()
            .unwrap()
    }
    fn info(n: u8) -> ManifestInfo {
        ManifestInfo {
            digest: dg(n),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        }
    }
    fn loc(s: &str) -> Location {
        Location::parse(s).unwrap()
    }

    #[test]
    fn expands_tags_all_tags_digests_and_prefixes() {
        let d = dg(7);
        let sel = parse_list(&format!(
            "app:1\nlib:ALL_TAGS\nother.io:5000/x/y:2\npin@{d}\ntagged:v9@{d}\nubuntu\n"
        ));
        let mut tags = TagListings::new();
        tags.insert(
            ("src.io".into(), "mirror/lib".into()),
            Ok(vec!["a".into(), "b".into()]),
        );
        let (w, f) = expand_entries(
            &sel.entries,
            &loc("src.io/mirror"),
            &loc("dst.io/pre"),
            &tags,
        );
        assert!(f.is_empty(), "{f:?}");
        let pairs: Vec<(String, String)> = w
            .iter()
            .map(|w| (w.source.to_string(), w.dest.to_string()))
            .collect();
        assert_eq!(
            pairs,
            vec![
                ("src.io/mirror/app:1".into(), "dst.io/pre/app:1".into()),
                ("src.io/mirror/lib:a".into(), "dst.io/pre/lib:a".into()),
                ("src.io/mirror/lib:b".into(), "dst.io/pre/lib:b".into()),
                ("other.io:5000/x/y:2".into(), "dst.io/pre/x/y:2".into()),
                (
                    format!("src.io/mirror/pin@{d}"),
                    format!("dst.io/pre/pin@{d}")
                ),
                (
                    format!("src.io/mirror/tagged:v9@{d}"),
                    "dst.io/pre/tagged:v9".into()
                ),
                (
                    "src.io/mirror/ubuntu:latest".into(),
                    "dst.io/pre/ubuntu:latest".into()
                ),
            ]
        );
    }

    #[test]
    fn two_sources_for_one_destination_tag_fail_the_later_naming_both() {
        let d = dg(3);
        let sel = parse_list(&format!(
            "quay.io/org/app:1\ndocker.io/org/app:1\norg/app:2\norg/app:2@{d}\nother.io/org/app@{d}\nquay.io/org/app@{d}\n"
        ));
        let (w, f) = expand_entries(
            &sel.entries,
            &loc("src.io"),
            &loc("dst.io/pre"),
            &TagListings::new(),
        );
        let kept: Vec<String> = w.iter().map(|w| w.source.to_string()).collect();
        assert_eq!(
            kept,
            [
                "quay.io/org/app:1".to_string(),
                "src.io/org/app:2".into(),
                format!("other.io/org/app@{d}"),
                format!("quay.io/org/app@{d}"),
            ],
            "digest-only destinations hold the same content: no conflict"
        );
        assert_eq!(f.len(), 2, "{f:?}");
        assert_eq!(f[0].what, "docker.io/org/app:1");
        assert_eq!(f[0].dest.as_deref(), Some("dst.io/pre/org/app:1"));
        assert_eq!(f[0].error.class, ErrorClass::BadInput);
        assert!(
            f[0].error.message.starts_with(
                "destination conflict: docker.io/org/app:1 and quay.io/org/app:1 both map to dst.io/pre/org/app:1"
            ),
            "{}",
            f[0].error.message
        );
        assert!(
            f[1].error
                .message
                .contains(&format!("src.io/org/app:2@{d} and src.io/org/app:2"))
        );
    }

    #[test]
    fn docker_hub_lines_read_library_and_land_as_written() {
        let sel = parse_list("ubuntu:22.04\ndocker.io/nginx\n");
        let (w, _) = expand_entries(
            &sel.entries,
            &loc("docker.io"),
            &loc("dst.io"),
            &TagListings::new(),
        );
        assert_eq!(w[0].source.repo, "library/ubuntu");
        assert_eq!(w[0].dest.repo, "ubuntu");
        assert_eq!(w[1].source.repo, "library/nginx");
        assert_eq!(w[1].dest.repo, "nginx");
    }

    #[test]
    fn a_failed_listing_fails_only_its_entry() {
        let sel = parse_list("a:ALL_TAGS\nb:1\n");
        let mut tags = TagListings::new();
        tags.insert(
            ("s.io".into(), "a".into()),
            Err(ItemError::new(ErrorClass::AuthDenied, "401")),
        );
        let (w, f) = expand_entries(&sel.entries, &loc("s.io"), &loc("d.io"), &tags);
        assert_eq!(w.len(), 1);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].what, "a:ALL_TAGS");
        assert_eq!(f[0].error.class, ErrorClass::AuthDenied);
    }

    #[test]
    fn all_repos_keeps_only_the_source_prefix_and_maps_it() {
        let repos = vec![
            "team/a".to_string(),
            "team/b/c".to_string(),
            "other/x".to_string(),
        ];
        let mut tags = TagListings::new();
        tags.insert(("s.io".into(), "team/a".into()), Ok(vec!["1".into()]));
        tags.insert(
            ("s.io".into(), "team/b/c".into()),
            Ok(vec!["2".into(), "3".into()]),
        );
        let (w, f) = expand_all_repos(&repos, &loc("s.io/team"), &loc("d.io/copy"), &tags);
        assert!(f.is_empty());
        let dests: Vec<String> = w.iter().map(|w| w.dest.to_string()).collect();
        assert_eq!(
            dests,
            ["d.io/copy/a:1", "d.io/copy/b/c:2", "d.io/copy/b/c:3"]
        );
    }

    #[test]
    fn plans_skip_copy_and_fail() {
        let w = |repo: &str| Wanted {
            source: ImageName {
                host: "s".into(),
                repo: repo.into(),
                tag: Some("1".into()),
                digest: None,
            },
            dest: ImageName {
                host: "d".into(),
                repo: repo.into(),
                tag: Some("1".into()),
                digest: None,
            },
        };
        let wanted = vec![
            w("same"),
            w("missing"),
            w("changed"),
            w("gone"),
            w("denied"),
            w("unobserved"),
        ];
        let mut s = HashMap::new();
        let mut d = HashMap::new();
        s.insert(wanted[0].source.clone(), Ok(Some(info(1))));
        d.insert(wanted[0].dest.clone(), Ok(Some(info(1))));
        s.insert(wanted[1].source.clone(), Ok(Some(info(2))));
        d.insert(wanted[1].dest.clone(), Ok(None));
        s.insert(wanted[2].source.clone(), Ok(Some(info(3))));
        d.insert(wanted[2].dest.clone(), Ok(Some(info(4))));
        s.insert(wanted[3].source.clone(), Ok(None));
        d.insert(wanted[3].dest.clone(), Ok(None));
        s.insert(
            wanted[4].source.clone(),
            Err(ItemError::new(ErrorClass::AuthDenied, "401")),
        );
        d.insert(wanted[4].dest.clone(), Ok(None));
        let p = plan(&wanted, &s, &d);
        let actions: Vec<String> = p
            .iter()
            .map(|i| match &i.action {
                Action::Copy => "copy".to_string(),
                Action::Skip => "skip".to_string(),
                Action::Fail(e) | Action::Conflict(e) => e.class.to_string(),
            })
            .collect();
        assert_eq!(
            actions,
            [
                "skip",
                "copy",
                "copy",
                "NotFound",
                "AuthDenied",
                "Retryable"
            ]
        );
    }

    #[test]
    fn a_pinned_digest_must_be_what_the_source_serves() {
        let want = Wanted {
            source: ImageName {
                host: "s".into(),
                repo: "a".into(),
                tag: None,
                digest: Some(dg(1)),
            },
            dest: ImageName {
                host: "d".into(),
                repo: "a".into(),
                tag: None,
                digest: Some(dg(1)),
            },
        };
        let mut s = HashMap::new();
        let mut d = HashMap::new();
        s.insert(want.source.clone(), Ok(Some(info(2))));
        d.insert(want.dest.clone(), Ok(None));
        assert!(
            matches!(&plan(&[want.clone()], &s, &d)[0].action, Action::Fail(e) if e.class == ErrorClass::DigestMismatch)
        );
        s.insert(want.source.clone(), Ok(Some(info(1))));
        d.insert(want.dest.clone(), Ok(Some(info(1))));
        assert_eq!(plan(&[want], &s, &d)[0].action, Action::Skip);
    }

    fn item(tagged: bool, source: Option<u8>, dest: Option<u8>, action: Action) -> PlanItem {
        let name = |host: &str| ImageName {
            host: host.into(),
            repo: "app".into(),
            tag: tagged.then(|| "1".to_string()),
            digest: (!tagged).then(|| dg(source.unwrap_or(0))),
        };
        PlanItem {
            wanted: Wanted {
                source: name("s"),
                dest: name("d"),
            },
            source: source.map(info),
            dest: dest.map(info),
            action,
        }
    }

    #[test]
    fn no_overwrite_leaves_a_moved_tag_alone_naming_both_digests() {
        let kept = keep_destination_tags(vec![
            item(true, Some(1), Some(2), Action::Copy),
            item(true, Some(1), None, Action::Copy),
            item(true, Some(1), Some(1), Action::Skip),
            item(false, Some(3), None, Action::Copy),
        ]);
        let Action::Conflict(e) = &kept[0].action else {
            panic!("{:?}", kept[0].action)
        };
        assert_eq!(e.class, ErrorClass::Conflict);
        assert!(e.message.contains(&dg(1).to_string()), "{}", e.message);
        assert!(e.message.contains(&dg(2).to_string()), "{}", e.message);
        assert!(e.message.contains("d/app:1"), "{}", e.message);
        assert_eq!(kept[1].action, Action::Copy);
        assert_eq!(kept[2].action, Action::Skip);
        assert_eq!(kept[3].action, Action::Copy);
    }

    proptest::proptest! {
        /// Only copies change, and only into conflicts: exactly those onto a tag that
        /// already holds another digest. Nothing is dropped or reordered.
        #[test]
        fn no_overwrite_turns_exactly_the_moved_tags_into_conflicts(
            cases in proptest::collection::vec(
                (proptest::bool::ANY, 0u8..3, proptest::option::of(0u8..3), 0u8..3), 0..40)
        ) {
            let before: Vec<PlanItem> = cases
                .iter()
                .map(|&(tagged, s, d, a)| {
                    let action = match a {
                        0 => Action::Copy,
                        1 => Action::Skip,
                        _ => Action::Fail(ItemError::new(ErrorClass::NotFound, "x")),
                    };
                    item(tagged, Some(s), d, action)
                })
                .collect();
            let after = keep_destination_tags(before.clone());
            proptest::prop_assert_eq!(after.len(), before.len());
            for (b, a) in before.iter().zip(&after) {
                proptest::prop_assert_eq!(&b.wanted, &a.wanted);
                let moved = b.action == Action::Copy
                    && b.wanted.dest.tag.is_some()
                    && b.dest.as_ref().is_some_and(|d| Some(&d.digest) != b.source.as_ref().map(|s| &s.digest));
                if moved {
                    proptest::prop_assert!(matches!(&a.action, Action::Conflict(e) if e.class == ErrorClass::Conflict));
                } else {
                    proptest::prop_assert_eq!(&a.action, &b.action);
                }
            }
        }
    }
}
