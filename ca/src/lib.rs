//! `mesh-ca` will be the certificate authority: root and intermediate keys, CSR signing for
//! SPIFFE identities, caller authentication and the gRPC signing service whose protocol is
//! defined in `mesh-api` (`mesh.ca.v1`). Nothing is implemented yet (see issue 4).
