//! `mesh-pilot` will be the control plane: config sources (a local folder, Kubernetes), the
//! mesh model, per-proxy translation and the delta discovery server, embedding the CA and the
//! injector webhook when a profile asks. Loading and validating configuration already lives in
//! `mesh-api::load`, which pilot will build on. Nothing is implemented yet (see issue 5).
