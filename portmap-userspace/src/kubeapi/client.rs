//! A kube-rs client from `--kubeconfig`, `KUBECONFIG`, the in-cluster
//! service account, or `~/.kube/config`.

use std::path::Path;

use anyhow::{Context as _, Result};
use kube::{
    Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};

/// A client for the cluster `kubeconfig` (or, without it, the environment)
/// points at. Nothing is asked of the API server yet.
pub async fn connect(kubeconfig: Option<&Path>) -> Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .with_context(|| format!("reading the kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("using the kubeconfig {}", path.display()))?
        }
        // KUBECONFIG or ~/.kube/config, else the service account of a pod.
        None => Config::infer().await.context(
            "no kubeconfig (--kubeconfig, KUBECONFIG, ~/.kube/config) and not in a pod \
             (no service account)",
        )?,
    };
    Client::try_from(config).context("building the API client")
}
