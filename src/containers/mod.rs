//! Declarative containers (containers.d, dockerup's job): what the files declare,
//! compared with the containers arpanet created, as a plan of actions. This module is
//! pure; the engine work is in [`converge`] (a pass) and [`apply`] (its actions).
//!
//! arpanet knows its own containers by labels: it never touches one without
//! `arpanet.managed=true`, and never removes one whose file failed to parse.

pub mod apply;
pub mod converge;
pub mod registration;

use std::fmt;

use sha2::{Digest, Sha256};

use crate::config::containers::{ContainerSpec, ContainersDir};
use crate::docker::engine::{Container, short};

pub const LABEL_MANAGED: &str = "arpanet.managed";
/// A hash of the declared spec: a container whose hash differs is replaced.
pub const LABEL_HASH: &str = "arpanet.spec-hash";
/// The file (name only) that declared the container.
pub const LABEL_FILE: &str = "arpanet.file";
/// The declared name (the Docker name differs briefly during an eager replace).
pub const LABEL_NAME: &str = "arpanet.name";

/// The image the container was created from; a tag that now names another image
/// means the container is replaced.
pub const LABEL_IMAGE_ID: &str = "arpanet.image-id";

/// Marks containers that are instances of a cluster service (placement's), which
/// containers.d's reconcile never touches, and the other way round.
pub const LABEL_CLUSTER: &str = "arpanet.cluster";

/// Whose containers a plan covers: containers.d's or the cluster services'.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Files,
    Cluster,
}

impl Scope {
    /// The label (`=true`) every container of the scope carries.
    pub fn label(self) -> &'static str {
        match self {
            Scope::Files => LABEL_MANAGED,
            Scope::Cluster => LABEL_CLUSTER,
        }
    }

    fn undeclared(self) -> &'static str {
        match self {
            Scope::Files => "no file declares it",
            Scope::Cluster => "not placed on this node",
        }
    }
}

/// Suffix of a replacement started before the old container goes (`update.eager`).
pub const EAGER_SUFFIX: &str = "-arpanet-next";

#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub name: String,
    pub scope: Scope,
    /// The file that declares it (containers.d) or its service (cluster).
    pub file: String,
    pub spec: ContainerSpec,
    pub hash: String,
    /// What the spec's image tag resolves to on this host (None: not here yet).
    pub image_id: Option<String>,
}

pub fn spec_hash(spec: &ContainerSpec) -> String {
    // Serialization is deterministic: struct order and BTreeMaps.
    let json = serde_json::to_vec(spec).expect("a spec always serializes");
    Sha256::digest(&json)
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn file_name(path: &std::path::Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

pub fn desired(loaded: &ContainersDir) -> Vec<Desired> {
    loaded
        .containers
        .iter()
        .map(|c| Desired {
            name: c.spec.name.as_str().to_string(),
            scope: Scope::Files,
            file: file_name(&c.file),
            hash: spec_hash(&c.spec),
            spec: c.spec.clone(),
            image_id: None,
        })
        .collect()
}

/// Each spec's image as this host has it (`None`: not here yet).
pub fn resolve_images(desired: &mut [Desired], images: &crate::docker::images::LocalImages) {
    for d in desired {
        d.image_id = images.id(d.spec.image.as_str()).map(str::to_string);
    }
}

/// Names (without directory) of the files that failed to parse.
pub fn broken(loaded: &ContainersDir) -> Vec<String> {
    loaded.broken_files.iter().map(|f| file_name(f)).collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Create {
        name: String,
    },
    /// The declared spec changed (or the image moved): a new container takes over.
    Replace {
        name: String,
        old: String,
        eager: bool,
        why: &'static str,
    },
    /// Created but never started (arpanetd stopped between the two).
    Start {
        name: String,
        id: String,
    },
    /// An eager replacement that was left under its temporary name.
    Rename {
        name: String,
        id: String,
    },
    Remove {
        name: String,
        id: String,
        why: &'static str,
    },
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Create { name } => write!(f, "create {name}"),
            Action::Replace {
                name,
                old,
                eager,
                why,
            } => {
                write!(
                    f,
                    "replace {name} ({}; {why}{})",
                    short(old),
                    if *eager { ", eager" } else { "" }
                )
            }
            Action::Start { name, id } => {
                write!(f, "start {name} ({}; created but not running)", short(id))
            }
            Action::Rename { name, id } => write!(f, "rename {} to {name}", short(id)),
            Action::Remove { name, id, why } => write!(f, "remove {name} ({}; {why})", short(id)),
        }
    }
}

/// The actions that bring `actual` (every container of `scope`) to `desired`.
/// Containers of `broken_files` are left as they are.
pub fn plan(
    scope: Scope,
    desired: &[Desired],
    actual: &[Container],
    broken_files: &[String],
) -> Vec<Action> {
    let name_of = |c: &Container| {
        c.labels
            .get(LABEL_NAME)
            .cloned()
            .unwrap_or_else(|| c.name.clone())
    };
    let mut actions = Vec::new();
    let mut removals = Vec::new();
    for d in desired {
        let mut mine: Vec<&Container> = actual.iter().filter(|c| name_of(c) == d.name).collect();
        // Prefer a current one that runs, then one that is current at all, then the one
        // that already has the declared name.
        mine.sort_by_key(|c| {
            (
                c.labels.get(LABEL_HASH) != Some(&d.hash),
                c.state != "running",
                c.name != d.name,
            )
        });
        match mine.split_first() {
            None => actions.push(Action::Create {
                name: d.name.clone(),
            }),
            Some((keep, extra)) => {
                // Before any rename: a duplicate may hold the declared name.
                for c in extra {
                    actions.push(Action::Remove {
                        name: d.name.clone(),
                        id: c.id.clone(),
                        why: "duplicate",
                    });
                }
                let moved = d
                    .image_id
                    .as_ref()
                    .is_some_and(|id| keep.labels.get(LABEL_IMAGE_ID) != Some(id));
                let why = if keep.labels.get(LABEL_HASH) != Some(&d.hash) {
                    Some("spec changed")
                } else if moved {
                    Some("image changed")
                } else {
                    None
                };
                if let Some(why) = why {
                    actions.push(Action::Replace {
                        name: d.name.clone(),
                        old: keep.id.clone(),
                        eager: d.spec.update.eager,
                        why,
                    });
                    continue;
                }
                if keep.name != d.name {
                    actions.push(Action::Rename {
                        name: d.name.clone(),
                        id: keep.id.clone(),
                    });
                }
                if keep.state == "created" {
                    actions.push(Action::Start {
                        name: d.name.clone(),
                        id: keep.id.clone(),
                    });
                }
            }
        }
    }
    for c in actual {
        let name = name_of(c);
        if desired.iter().any(|d| d.name == name) {
            continue;
        }
        if c.labels
            .get(LABEL_FILE)
            .is_some_and(|f| broken_files.contains(f))
        {
            continue;
        }
        removals.push(Action::Remove {
            name,
            id: c.id.clone(),
            why: scope.undeclared(),
        });
    }
    actions.extend(removals);
    actions
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn declared(files: &[(&str, &str)]) -> ContainersDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        crate::config::containers::load_dir(dir.path())
    }

    fn spec(name: &str, env: &str) -> String {
        format!(
            "[[container]]\nname = \"{name}\"\nimage = \"busybox:1\"\nenv = {{ X = \"{env}\" }}\n"
        )
    }

    fn running(d: &Desired, id: &str) -> Container {
        Container {
            id: id.into(),
            name: d.name.clone(),
            labels: HashMap::from([
                (LABEL_MANAGED.into(), "true".into()),
                (LABEL_NAME.into(), d.name.clone()),
                (LABEL_FILE.into(), d.file.clone()),
                (LABEL_HASH.into(), d.hash.clone()),
            ]),
            state: "running".into(),
        }
    }

    #[test]
    fn hash_follows_the_spec() {
        let a = desired(&declared(&[("a.toml", &spec("web", "1"))]));
        let b = desired(&declared(&[("a.toml", &spec("web", "2"))]));
        let a2 = desired(&declared(&[("a.toml", &spec("web", "1"))]));
        assert_ne!(a[0].hash, b[0].hash);
        assert_eq!(a[0].hash, a2[0].hash);
    }

    #[test]
    fn nothing_to_do_when_everything_runs_as_declared() {
        let d = desired(&declared(&[("a.toml", &spec("web", "1"))]));
        assert_eq!(plan(Scope::Files, &d, &[running(&d[0], "id1")], &[]), []);
    }

    #[test]
    fn missing_is_created_changed_is_replaced_undeclared_is_removed() {
        let old = desired(&declared(&[(
            "a.toml",
            &(spec("web", "1") + &spec("gone", "1")),
        )]));
        let new = desired(&declared(&[(
            "a.toml",
            &(spec("web", "2") + &spec("db", "1")),
        )]));
        let actual = [running(&old[0], "idweb"), running(&old[1], "idgone")];
        assert_eq!(
            plan(Scope::Files, &new, &actual, &[]),
            [
                Action::Replace {
                    name: "web".into(),
                    old: "idweb".into(),
                    eager: false,
                    why: "spec changed",
                },
                Action::Create { name: "db".into() },
                Action::Remove {
                    name: "gone".into(),
                    id: "idgone".into(),
                    why: "no file declares it"
                },
            ]
        );
    }

    #[test]
    fn a_tag_that_names_a_new_image_replaces_the_container() {
        let mut d = desired(&declared(&[("a.toml", &spec("web", "1"))]));
        let mut c = running(&d[0], "idweb");
        c.labels.insert(LABEL_IMAGE_ID.into(), "sha256:old".into());
        d[0].image_id = Some("sha256:old".into());
        assert_eq!(plan(Scope::Files, &d, &[c.clone()], &[]), []);
        d[0].image_id = Some("sha256:new".into());
        assert_eq!(
            plan(Scope::Files, &d, &[c], &[]),
            [Action::Replace {
                name: "web".into(),
                old: "idweb".into(),
                eager: false,
                why: "image changed"
            }]
        );
    }

    #[test]
    fn a_broken_files_containers_stay() {
        let before = desired(&declared(&[("b.toml", &spec("db", "1"))]));
        let loaded = declared(&[("b.toml", "[[container]]\nname = \"db\"\nimage = ")]);
        assert_eq!(broken(&loaded), ["b.toml"]);
        assert_eq!(
            plan(
                Scope::Files,
                &desired(&loaded),
                &[running(&before[0], "iddb")],
                &broken(&loaded)
            ),
            []
        );
    }

    #[test]
    fn what_a_crash_leaves_behind_is_cleaned_up() {
        let d = desired(&declared(&[("a.toml", &spec("web", "1"))]));
        // Created but never started, plus an older copy.
        let mut created = running(&d[0], "idnew");
        created.state = "created".into();
        let mut stale = running(&d[0], "idold");
        stale.labels.insert(LABEL_HASH.into(), "0000".into());
        assert_eq!(
            plan(Scope::Files, &d, &[stale, created.clone()], &[]),
            [
                Action::Remove {
                    name: "web".into(),
                    id: "idold".into(),
                    why: "duplicate"
                },
                Action::Start {
                    name: "web".into(),
                    id: "idnew".into()
                },
            ]
        );
        // Two current copies: the one with the declared name stays, the other goes first.
        let mut copy = created.clone();
        copy.id = "idcopy".into();
        copy.name = "web-copy".into();
        assert_eq!(
            plan(Scope::Files, &d, &[copy, created.clone()], &[]),
            [
                Action::Remove {
                    name: "web".into(),
                    id: "idcopy".into(),
                    why: "duplicate"
                },
                Action::Start {
                    name: "web".into(),
                    id: "idnew".into()
                },
            ]
        );
        // An eager replacement left under its temporary name.
        let mut next = running(&d[0], "idnext");
        next.name = format!("web{EAGER_SUFFIX}");
        assert_eq!(
            plan(Scope::Files, &d, &[next], &[]),
            [Action::Rename {
                name: "web".into(),
                id: "idnext".into()
            }]
        );
    }

    #[test]
    fn eager_is_carried_into_the_replace() {
        let text =
            "[[container]]\nname = \"web\"\nimage = \"busybox:1\"\nupdate = { eager = true }\n";
        let d = desired(&declared(&[("a.toml", text)]));
        let mut old = running(&d[0], "idweb");
        old.labels.insert(LABEL_HASH.into(), "0000".into());
        assert_eq!(
            plan(Scope::Files, &d, &[old], &[]),
            [Action::Replace {
                name: "web".into(),
                old: "idweb".into(),
                eager: true,
                why: "spec changed",
            }]
        );
    }
}
