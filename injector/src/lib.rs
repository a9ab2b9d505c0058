//! `mesh-injector` will be the Kubernetes sidecar injector: a pure function from Pod to JSON
//! patch, and the HTTPS admission webhook around it. Nothing is implemented yet.
