//! Deployments on the local mesh: each replica of a Deployment whose image is `mesh-echo`
//! becomes a pod (the runtime runs processes, not images), so the Kubernetes form of an
//! application (`manifests/samples/order-app/app.yaml`) runs here unchanged.

use k8s_openapi::api::apps::v1::Deployment;
use mesh_api::Resource;

use super::{Mesh, PodSpec, RuntimeError, config};

/// The only image the local runtime runs (as the `mesh-echo` binary).
pub const ECHO_IMAGE: &str = "mesh-echo";

/// A Deployment the local runtime cannot start.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeploymentError {
    /// A part every Deployment it runs needs.
    #[error("{0} is missing")]
    Missing(&'static str),
    /// An image other than the test app.
    #[error(
        "image {0:?}: the local runtime runs only {ECHO_IMAGE} (start other workloads with `meshctl run`)"
    )]
    Image(String),
    /// An environment variable whose value the runtime cannot resolve.
    #[error("env {0}: valueFrom is not supported by the local runtime (give the value itself)")]
    EnvFrom(String),
}

/// The pods a Deployment asks for: one per replica, named `DEPLOYMENT-N`, with the template's
/// labels, service account, container ports and `mesh-echo` arguments.
pub fn pods_for_deployment(d: &Deployment) -> Result<Vec<PodSpec>, DeploymentError> {
    let name = d.metadata.name.clone().unwrap_or_default();
    let namespace = d
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let spec = d.spec.as_ref().ok_or(DeploymentError::Missing("spec"))?;
    let template = &spec.template;
    let pod_spec = template
        .spec
        .as_ref()
        .ok_or(DeploymentError::Missing("spec.template.spec"))?;
    let container = pod_spec
        .containers
        .first()
        .ok_or(DeploymentError::Missing("spec.template.spec.containers"))?;
    let image = container.image.clone().unwrap_or_default();
    let image_name = image
        .rsplit('/')
        .next()
        .unwrap_or("")
        .split(':')
        .next()
        .unwrap_or("");
    if image_name != ECHO_IMAGE {
        return Err(DeploymentError::Image(image));
    }
    let mut command = vec![ECHO_IMAGE.to_string()];
    command.extend(container.args.iter().flatten().cloned());
    let ports: Vec<u16> = container
        .ports
        .iter()
        .flatten()
        .filter_map(|p| u16::try_from(p.container_port).ok())
        .collect();
    let env = container
        .env
        .iter()
        .flatten()
        .map(|e| match (&e.value, &e.value_from) {
            (_, Some(_)) => Err(DeploymentError::EnvFrom(e.name.clone())),
            (value, None) => Ok((e.name.clone(), value.clone().unwrap_or_default())),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let annotations = template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.clone())
        .unwrap_or_default();
    let sidecar = annotations
        .get("sidecar.istio.io/inject")
        .is_none_or(|v| v != "false");
    let labels = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    // As the injector does on Kubernetes: the sidecar serves the app's own metrics on 15020.
    let proxy_env: Vec<(String, String)> =
        mesh_injector::original_prometheus_annotations(&annotations)
            .map(|json| (mesh_injector::PROMETHEUS_ANNOTATIONS_ENV.to_string(), json))
            .into_iter()
            .collect();
    let replicas = spec.replicas.unwrap_or(1).max(0) as usize;
    Ok((0..replicas)
        .map(|i| PodSpec {
            name: format!("{name}-{i}"),
            namespace: namespace.clone(),
            service_account: pod_spec
                .service_account_name
                .clone()
                .unwrap_or_else(|| "default".into()),
            labels: labels.clone(),
            ports: ports.clone(),
            sidecar,
            gateway: false,
            command: command.clone(),
            env: env.clone(),
            proxy_env: proxy_env.clone(),
        })
        .collect())
}

/// The gateway pod deployed for a Gateway API Gateway of the mesh's class, as Istio deploys
/// `NAME-istio` for it: labelled with the Gateway's name (which its generated configuration
/// selects), in its namespace. `None` for Gateways of other classes, or ones that name the
/// Service of a gateway deployed by hand in `spec.addresses`.
pub fn gateway_pod_for(g: &mesh_api::gateway_api::Gateway, classes: &[String]) -> Option<PodSpec> {
    let ours = g.spec.gateway_class_name == "istio" || classes.contains(&g.spec.gateway_class_name);
    if !ours || !g.spec.addresses.is_empty() {
        return None;
    }
    let name = g.metadata.name.clone().unwrap_or_default();
    // The pod's name must stay a DNS label: a long Gateway name is cut short.
    let keep = super::pods::MAX_POD_NAME - "-istio-0".len();
    let short: String = name.chars().take(keep).collect();
    Some(PodSpec {
        name: format!("{}-istio-0", short.trim_end_matches('-')),
        namespace: g
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        service_account: format!("{name}-istio"),
        labels: [
            (
                "gateway.networking.k8s.io/gateway-name".to_string(),
                name.clone(),
            ),
            ("istio.io/gateway-name".to_string(), name),
        ]
        .into(),
        sidecar: true,
        gateway: true,
        ..PodSpec::default()
    })
}

impl Mesh {
    /// Starts the pods of every Deployment among `resources` that is not running yet, and a
    /// gateway for every Gateway API Gateway of the mesh's class. Returns the pods started
    /// and, per Deployment the runtime cannot run, why.
    pub fn start_deployments(
        &self,
        resources: &[Resource],
        mut on_pod: impl FnMut(&str),
    ) -> Result<(Vec<String>, Vec<String>), RuntimeError> {
        let running = self.state()?.pods;
        let (mut started, mut skipped) = (Vec::new(), Vec::new());
        // GatewayClasses of the mesh's controller (applied now or before).
        let classes: Vec<String> = resources
            .iter()
            .chain(config::read_all(&self.layout).iter())
            .filter_map(|r| match r {
                Resource::GatewayClass(c)
                    if c.spec.controller_name == "istio.io/gateway-controller" =>
                {
                    c.metadata.name.clone()
                }
                _ => None,
            })
            .collect();
        for r in resources {
            if let Resource::KubeGateway(g) = r {
                if let Some(pod) = gateway_pod_for(g, &classes)
                    && !running.contains_key(&pod.name)
                {
                    on_pod(&pod.name);
                    self.run(&pod)?;
                    started.push(pod.name.clone());
                }
                continue;
            }
            let Resource::Deployment(d) = r else { continue };
            match pods_for_deployment(d) {
                Err(why) => skipped.push(format!("Deployment {}: {why}", r.display_name())),
                Ok(pods) => {
                    for pod in pods.iter().filter(|p| !running.contains_key(&p.name)) {
                        on_pod(&pod.name);
                        self.run(pod)?;
                        started.push(pod.name.clone());
                    }
                }
            }
        }
        Ok((started, skipped))
    }

    /// Applies `paths` to the mesh's configuration (see [`config::apply`]); when the mesh
    /// runs, refreshes every pod's names and starts the pods of new Deployments.
    pub fn apply(
        &self,
        paths: &[std::path::PathBuf],
        on_pod: impl FnMut(&str),
    ) -> Result<Deployed, config::ApplyError> {
        let applied = config::apply(&self.layout, paths)?;
        let mut deployed = Deployed::default();
        if let Ok(st) = self.state() {
            config::write_hosts(&self.layout, &st)?;
            let (started, skipped) = self.start_deployments(&applied.resources, on_pod)?;
            deployed.started = started;
            deployed.skipped = skipped;
        }
        deployed.applied = applied;
        Ok(deployed)
    }

    /// Deletes what `paths` describe from the configuration; refreshes pods' names.
    pub fn delete(&self, paths: &[std::path::PathBuf]) -> Result<Vec<String>, config::ApplyError> {
        let lines = config::delete(&self.layout, paths)?;
        if let Ok(st) = self.state() {
            config::write_hosts(&self.layout, &st)?;
        }
        Ok(lines)
    }
}

/// What [`Mesh::apply`] did.
#[derive(Debug, Default)]
pub struct Deployed {
    /// The configuration written.
    pub applied: config::Applied,
    /// Pods started for Deployments.
    pub started: Vec<String>,
    /// Deployments the runtime cannot run, and why.
    pub skipped: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(env: &str) -> Deployment {
        serde_json::from_value(
            mesh_injector::template::from_yaml(&format!(
                "
metadata: {{name: keys-v1, namespace: shop}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: keys}}}}
  template:
    metadata: {{labels: {{app: keys}}}}
    spec:
      serviceAccountName: keys
      containers:
      - name: keys
        image: registry.example/mesh-echo:1.0
        args: [--port, '8080']
        env: {env}
        ports: [{{containerPort: 8080}}]
"
            ))
            .unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn a_deployments_pods_carry_its_container_env() {
        let pods =
            pods_for_deployment(&deployment("[{name: JWKS, value: '{}'}, {name: EMPTY}]")).unwrap();
        assert_eq!(pods.len(), 2);
        assert_eq!(pods[1].name, "keys-v1-1");
        assert_eq!(pods[0].command, ["mesh-echo", "--port", "8080"]);
        assert_eq!(
            pods[0].env,
            [
                ("JWKS".into(), "{}".into()),
                ("EMPTY".into(), String::new())
            ]
        );
        let refused = pods_for_deployment(&deployment(
            "[{name: TOKEN, valueFrom: {secretKeyRef: {name: s, key: k}}}]",
        ))
        .unwrap_err();
        assert_eq!(
            refused.to_string(),
            "env TOKEN: valueFrom is not supported by the local runtime (give the value itself)"
        );
    }
}
