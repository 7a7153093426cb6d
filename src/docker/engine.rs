//! A thin layer over bollard for what arpanet asks of the local Docker engine.

use std::collections::HashMap;
use std::path::Path;

use bollard::Docker;
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder, RenameContainerOptionsBuilder, StartContainerOptions,
    StopContainerOptionsBuilder,
};
use futures::TryStreamExt;

/// What the engine adapter fails with; the message names what was asked.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("cannot reach Docker at {socket}: {why} (is dockerd running?)")]
    Unreachable { socket: String, why: String },
    #[error("{what}: {source}")]
    Request {
        what: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The engine answered, but refused (a `docker load` whose tarball it rejects).
    #[error("{what}: {why}")]
    Refused { what: String, why: String },
}

type Result<T> = std::result::Result<T, DockerError>;

/// Names a failed request.
fn req(what: impl Into<String>) -> impl FnOnce(bollard::errors::Error) -> DockerError {
    let what = what.into();
    move |source| DockerError::Request { what, source }
}

/// A container as the engine lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    /// Without Docker's leading `/`.
    pub name: String,
    pub labels: HashMap<String, String>,
    /// created, running, exited, ...
    pub state: String,
}

pub struct Engine {
    docker: Docker,
    socket: String,
}

impl Engine {
    /// Connects and agrees on an API version the engine speaks (Debian's 20.10 speaks 1.41).
    pub async fn connect(socket: &Path) -> Result<Self> {
        let path = socket.display().to_string();
        let fail = |e: &dyn std::fmt::Display| DockerError::Unreachable {
            socket: path.clone(),
            why: e.to_string(),
        };
        let docker = Docker::connect_with_unix(&path, 120, bollard::API_DEFAULT_VERSION)
            .map_err(|e| fail(&e))?;
        let docker = docker.negotiate_version().await.map_err(|e| fail(&e))?;
        Ok(Self {
            docker,
            socket: path,
        })
    }

    /// Every container (running or not) carrying `label=value`.
    pub async fn containers_with_label(&self, label: &str, value: &str) -> Result<Vec<Container>> {
        let filters = HashMap::from([("label", vec![format!("{label}={value}")])]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let list = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(req(format!("list containers at {}", self.socket)))?;
        Ok(list
            .into_iter()
            .map(|c| Container {
                name: summary_name(&c),
                id: c.id.unwrap_or_default(),
                labels: c.labels.unwrap_or_default(),
                state: c.state.map(|s| s.to_string()).unwrap_or_default(),
            })
            .collect())
    }

    pub async fn image_present(&self, image: &str) -> Result<bool> {
        Ok(self.image_id(image).await?.is_some())
    }

    /// The ID the reference resolves to here, if the image is present.
    pub async fn image_id(&self, image: &str) -> Result<Option<String>> {
        match self.docker.inspect_image(image).await {
            Ok(i) => Ok(i.id),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(req(format!("inspect image {image}"))(e)),
        }
    }

    /// Removes an image unless something still uses or names it. Returns whether it went.
    pub async fn remove_image_if_unused(&self, id: &str) -> Result<bool> {
        match self
            .docker
            .remove_image(
                id,
                None::<bollard::query_parameters::RemoveImageOptions>,
                None,
            )
            .await
        {
            Ok(_) => Ok(true),
            // 409: in use or still tagged; 404: already gone.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409 | 404,
                ..
            }) => Ok(false),
            Err(e) => Err(req(format!("remove image {}", short(id)))(e)),
        }
    }

    pub async fn pull(&self, image: &str) -> Result<()> {
        let options = CreateImageOptionsBuilder::new().from_image(image).build();
        self.docker
            .create_image(Some(options), None, None)
            .try_collect::<Vec<_>>()
            .await
            .map_err(req(format!("pull {image}")))?;
        Ok(())
    }

    /// Pushes `image` (`host:port/repo:tag`) to its registry; `progress` sees every
    /// status Docker reports (per layer: `Pushing` with bytes, `Pushed`, `Layer already
    /// exists`; at the end the manifest's digest).
    pub async fn push(
        &self,
        image: &str,
        mut progress: impl FnMut(&bollard::models::PushImageInfo),
    ) -> Result<()> {
        let last_colon = image.rfind(':').filter(|i| !image[*i..].contains('/'));
        let (repo, tag) = match last_colon {
            Some(i) => (&image[..i], &image[i + 1..]),
            None => (image, "latest"),
        };
        let options = bollard::query_parameters::PushImageOptionsBuilder::new()
            .tag(tag)
            .build();
        let mut stream = self.docker.push_image(repo, Some(options), None);
        while let Some(info) = stream
            .try_next()
            .await
            .map_err(req(format!("push {image}")))?
        {
            // Docker reports a failed push in the stream, after a 200.
            if let Some(e) = &info.error_detail {
                return Err(DockerError::Refused {
                    what: format!("push {image}"),
                    why: e.message.clone().unwrap_or_default(),
                });
            }
            progress(&info);
        }
        Ok(())
    }

    pub async fn create(&self, name: &str, body: ContainerCreateBody) -> Result<String> {
        let options = CreateContainerOptionsBuilder::new().name(name).build();
        let created = self
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(req(format!("create container {name}")))?;
        Ok(created.id)
    }

    pub async fn start(&self, id: &str) -> Result<()> {
        self.docker
            .start_container(id, None::<StartContainerOptions>)
            .await
            .map_err(req(format!("start container {}", short(id))))
    }

    /// Stops (giving it `grace_secs` to exit) and removes a container.
    pub async fn stop_and_remove(&self, id: &str, grace_secs: i32) -> Result<()> {
        let stop = StopContainerOptionsBuilder::new().t(grace_secs).build();
        match self.docker.stop_container(id, Some(stop)).await {
            // 304: already stopped.
            Ok(())
            | Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => {}
            Err(e) => return Err(req(format!("stop container {}", short(id)))(e)),
        }
        let remove = RemoveContainerOptionsBuilder::new().force(true).build();
        self.docker
            .remove_container(id, Some(remove))
            .await
            .map_err(req(format!("remove container {}", short(id))))
    }

    pub async fn rename(&self, id: &str, name: &str) -> Result<()> {
        let options = RenameContainerOptionsBuilder::new().name(name).build();
        self.docker
            .rename_container(id, options)
            .await
            .map_err(req(format!("rename container {} to {name}", short(id))))
    }
}

/// What the cluster API asks of the engine on behalf of users (`arpanet ps`, `stop`, ...).
impl Engine {
    pub async fn list_all(&self) -> Result<Vec<bollard::models::ContainerSummary>> {
        let options = ListContainersOptionsBuilder::new().all(true).build();
        self.docker
            .list_containers(Some(options))
            .await
            .map_err(req(format!("list containers at {}", self.socket)))
    }

    /// `None` when no container has that ID, ID prefix or name.
    pub async fn inspect(
        &self,
        id: &str,
    ) -> Result<Option<bollard::models::ContainerInspectResponse>> {
        match self.docker.inspect_container(id, None).await {
            Ok(i) => Ok(Some(i)),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(req(format!("inspect container {id}"))(e)),
        }
    }

    pub async fn stop(&self, id: &str, grace_secs: i32) -> Result<()> {
        let stop = StopContainerOptionsBuilder::new().t(grace_secs).build();
        match self.docker.stop_container(id, Some(stop)).await {
            Ok(())
            | Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(req(format!("stop container {}", short(id)))(e)),
        }
    }

    pub async fn restart(&self, id: &str, grace_secs: i32) -> Result<()> {
        let options = bollard::query_parameters::RestartContainerOptionsBuilder::new()
            .t(grace_secs)
            .build();
        self.docker
            .restart_container(id, Some(options))
            .await
            .map_err(req(format!("restart container {}", short(id))))
    }

    /// The image's inspect answer, `None` when the engine has no such image.
    pub async fn inspect_image(
        &self,
        image: &str,
    ) -> Result<Option<bollard::models::ImageInspect>> {
        match self.docker.inspect_image(image).await {
            Ok(i) => Ok(Some(i)),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(req(format!("inspect image {image}"))(e)),
        }
    }

    /// `docker save NAME...` of one image under the names given (its tags, which the
    /// tarball's manifest then lists as RepoTags; an ID gives none), as a stream of
    /// tarball bytes.
    pub fn export_image(
        &self,
        names: &[&str],
    ) -> impl futures::Stream<Item = std::result::Result<bytes::Bytes, bollard::errors::Error>> + use<>
    {
        self.docker.export_images(names)
    }

    /// `docker load` of a `docker save` tarball.
    pub async fn load(&self, tarball: &Path) -> Result<()> {
        let file = tokio::fs::File::open(tarball)
            .await
            .map_err(|source| DockerError::Io {
                what: format!("open {}", tarball.display()),
                source,
            })?;
        let body = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20);
        let options = bollard::query_parameters::ImportImageOptionsBuilder::new()
            .quiet(true)
            .build();
        let answers = self
            .docker
            .import_image_stream(options, body, None)
            .try_collect::<Vec<_>>()
            .await
            .map_err(req(format!("docker load {}", tarball.display())))?;
        if let Some(e) = answers.iter().find_map(|a| a.error_detail.as_ref()) {
            return Err(DockerError::Refused {
                what: format!("docker load {}", tarball.display()),
                why: e.message.clone().unwrap_or_default(),
            });
        }
        Ok(())
    }

    /// Tags `image` as `tag` (`repo:tag`; a reference without a tag means `latest`).
    pub async fn tag(&self, image: &str, tag: &str) -> Result<()> {
        let last_colon = tag.rfind(':').filter(|i| !tag[*i..].contains('/'));
        let (repo, t) = match last_colon {
            Some(i) => (&tag[..i], &tag[i + 1..]),
            None => (tag, "latest"),
        };
        let options = bollard::query_parameters::TagImageOptionsBuilder::new()
            .repo(repo)
            .tag(t)
            .build();
        self.docker
            .tag_image(image, Some(options))
            .await
            .map_err(req(format!(
                "tag {} as {tag}",
                short(image.trim_start_matches("sha256:"))
            )))
    }

    /// Every local image by the references that name it: one listing for a whole pass.
    pub async fn local_images(&self) -> Result<super::images::LocalImages> {
        Ok(super::images::LocalImages::from_summaries(
            &self.images().await?,
        ))
    }

    pub async fn images(&self) -> Result<Vec<bollard::models::ImageSummary>> {
        self.docker
            .list_images(None::<bollard::query_parameters::ListImagesOptions>)
            .await
            .map_err(req(format!("list images at {}", self.socket)))
    }
}

/// A listed container's name, without Docker's leading `/`.
pub fn summary_name(c: &bollard::models::ContainerSummary) -> String {
    c.names
        .as_ref()
        .and_then(|n| n.first())
        .map(|n| n.trim_start_matches('/').to_string())
        .unwrap_or_default()
}

/// Docker's 12-character form of an ID, for messages.
pub fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// A running container with what service registration needs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Running {
    pub id: String,
    pub name: String,
    /// Its address on its (first) network: 10.a.b.x on the bridge, routable cluster-wide.
    pub ip: Option<std::net::Ipv4Addr>,
    pub env: std::collections::BTreeMap<String, String>,
    pub labels: std::collections::BTreeMap<String, String>,
    /// `8080/tcp` style.
    pub exposed: Vec<String>,
    /// It shares the host's network (no address of its own).
    pub host_network: bool,
}

impl Engine {
    pub async fn running(&self) -> Result<Vec<Running>> {
        let options = ListContainersOptionsBuilder::new().all(false).build();
        let list = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(req(format!("list containers at {}", self.socket)))?;
        let mut out = Vec::new();
        for c in list {
            let Some(id) = c.id else { continue };
            // Gone between list and inspect: nothing to register.
            let Ok(i) = self.docker.inspect_container(&id, None).await else {
                continue;
            };
            let config = i.config.unwrap_or_default();
            let host_network = i
                .host_config
                .as_ref()
                .and_then(|h| h.network_mode.as_deref())
                == Some("host");
            let ip = i
                .network_settings
                .and_then(|n| n.networks)
                .and_then(|nets| {
                    nets.into_values()
                        .find_map(|e| e.ip_address.filter(|ip| !ip.is_empty()))
                })
                .and_then(|ip| ip.parse().ok());
            out.push(Running {
                id,
                name: i
                    .name
                    .unwrap_or_default()
                    .trim_start_matches('/')
                    .to_string(),
                ip,
                env: config
                    .env
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|kv| {
                        kv.split_once('=')
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                    })
                    .collect(),
                labels: config.labels.unwrap_or_default().into_iter().collect(),
                exposed: config.exposed_ports.unwrap_or_default(),
                host_network,
            });
        }
        Ok(out)
    }

    /// A container's log as Docker keeps it, stdout and stderr merged in the order they
    /// were written, from `since` (a Unix time) and only the last `tail` lines of it;
    /// with `follow`, output written later too, until the container stops.
    pub fn logs(
        &self,
        id: &str,
        follow: bool,
        since: Option<i32>,
        tail: Option<u64>,
    ) -> impl futures::Stream<Item = Result<bytes::Bytes>> + Send + use<> {
        use futures::StreamExt;
        let tail = tail.map_or_else(|| "all".to_string(), |n| n.to_string());
        let mut options = bollard::query_parameters::LogsOptionsBuilder::new()
            .follow(follow)
            .stdout(true)
            .stderr(true)
            .tail(&tail);
        if let Some(since) = since {
            options = options.since(since);
        }
        let what = format!("logs of container {}", short(id));
        self.docker.logs(id, Some(options.build())).map(move |r| {
            r.map(bollard::container::LogOutput::into_bytes)
                .map_err(|source| DockerError::Request {
                    what: what.clone(),
                    source,
                })
        })
    }

    /// Container lifecycle events, as they happen.
    pub fn container_events(
        &self,
    ) -> impl futures::Stream<
        Item = std::result::Result<bollard::models::EventMessage, bollard::errors::Error>,
    > + use<> {
        let filters = HashMap::from([("type", vec!["container".to_string()])]);
        let options = bollard::query_parameters::EventsOptionsBuilder::new()
            .filters(&filters)
            .build();
        self.docker.events(Some(options))
    }
}
