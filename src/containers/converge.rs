//! The engine work of one pass over a scope's containers: images this host lacks are
//! fetched from the cluster's nodes, the plan is made against what runs, and carried
//! out. containers.d's pass (here) and the cluster services' (placement) share it.

use std::path::Path;

use serde::Serialize;

use super::{Action, Desired, Scope, apply, broken, desired, plan, resolve_images};
use crate::docker::engine::Engine;
use crate::docker::images::LocalImages;
use crate::outcome::{ErrorList, Outcome};

/// What a pass over one scope found and did.
#[derive(Debug)]
pub struct Pass {
    /// Declarations that could not be read (their containers are left alone).
    pub diagnostics: Vec<String>,
    pub actions: Vec<Action>,
    pub report: Outcome,
}

impl Pass {
    /// Every problem: unreadable declarations, then failed actions.
    pub fn problems(&self) -> impl Iterator<Item = String> + '_ {
        self.diagnostics
            .iter()
            .cloned()
            .chain(self.report.errors.iter().map(|e| e.to_string()))
    }
}

/// `arpanet up --json`'s shape: `report.done` and `report.errors` as lines.
impl Serialize for Pass {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Report<'a> {
            done: &'a [String],
            errors: Vec<String>,
        }
        #[derive(Serialize)]
        struct Shape<'a> {
            diagnostics: &'a [String],
            actions: Vec<String>,
            report: Report<'a>,
        }
        Shape {
            diagnostics: &self.diagnostics,
            actions: self.actions.iter().map(|a| a.to_string()).collect(),
            report: Report {
                done: &self.report.changes,
                errors: self.report.errors.iter().map(|e| e.to_string()).collect(),
            },
        }
        .serialize(s)
    }
}

/// A missing image from the cluster's nodes (the sync service at `swarm`). `Ok(None)`
/// when they have none either; apply then pulls from a registry.
pub async fn fetch_from_swarm(
    engine: &Engine,
    swarm: Option<&Path>,
    image: &str,
    errors: &mut ErrorList,
) -> anyhow::Result<Option<String>> {
    let Some(socket) = swarm else {
        return Ok(None);
    };
    match crate::imagesync::client::fetch_from_swarm(socket, image).await {
        Ok(true) => Ok(engine.image_id(image).await?),
        Ok(false) => Ok(None),
        Err(e) => {
            errors.push(crate::outcome::Failure::new(
                image,
                format!("{e:#}; trying a registry"),
            ));
            Ok(None)
        }
    }
}

/// How a pass goes: whether it applies its plan, and where missing images come from.
pub struct Options<'a> {
    pub apply: bool,
    /// The sync service's socket: images this host lacks are fetched from the nodes.
    pub swarm: Option<&'a Path>,
    pub progress: &'a (dyn Fn(usize, usize, &Action) + Sync),
}

/// Plans `desired` (their images resolved against `images`) against the scope's
/// containers, and with `opts.apply` carries the plan out. `keep` names the
/// declarations that could not be read: their containers are never removed.
pub async fn converge_scope(
    engine: &Engine,
    scope: Scope,
    mut desired: Vec<Desired>,
    images: &LocalImages,
    keep: &[String],
    opts: &Options<'_>,
) -> anyhow::Result<(Vec<Action>, Outcome)> {
    resolve_images(&mut desired, images);
    let mut fetch_errors = ErrorList::default();
    if opts.apply {
        for d in desired.iter_mut().filter(|d| d.image_id.is_none()) {
            d.image_id =
                fetch_from_swarm(engine, opts.swarm, d.spec.image.as_str(), &mut fetch_errors)
                    .await?;
        }
    }
    let actual = engine.containers_with_label(scope.label(), "true").await?;
    let actions = plan(scope, &desired, &actual, keep);
    let mut report = if opts.apply {
        apply::apply(engine, &actions, &desired, &actual, opts.progress).await
    } else {
        Outcome::default()
    };
    report.errors.extend(fetch_errors);
    Ok((actions, report))
}

/// One pass over containers.d. Broken files come back as diagnostics; their
/// containers are left alone and every other file is applied. With `pull`, images
/// whose spec says `update.pull` are pulled first, so a newer image published under
/// the tag replaces the containers; a failed pull is reported and the local image used.
pub async fn converge_files(
    engine: &Engine,
    images: &LocalImages,
    dir: &Path,
    pull: bool,
    opts: &Options<'_>,
) -> anyhow::Result<Pass> {
    let loaded = crate::config::containers::load_dir(dir);
    let declared = desired(&loaded);
    let mut pull_errors = ErrorList::default();
    let mut pulled = false;
    if pull && opts.apply {
        for d in declared.iter().filter(|d| d.spec.update.pull) {
            match engine.pull(d.spec.image.as_str()).await {
                Ok(()) => pulled = true,
                Err(e) => pull_errors.push(crate::outcome::Failure::new(
                    d.name.clone(),
                    format!("{e:#}; using the local image"),
                )),
            }
        }
    }
    // A pull may have moved a tag: the images are listed again.
    let fresh;
    let images = if pulled {
        fresh = engine.local_images().await?;
        &fresh
    } else {
        images
    };
    let (actions, mut report) = converge_scope(
        engine,
        Scope::Files,
        declared,
        images,
        &broken(&loaded),
        opts,
    )
    .await?;
    report.errors.extend(pull_errors);
    Ok(Pass {
        diagnostics: loaded.diagnostics.iter().map(|d| d.to_string()).collect(),
        actions,
        report,
    })
}
