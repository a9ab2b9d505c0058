//! `mesh-e2e` will hold the end-to-end harness (workloads in local network namespaces; kind
//! where Docker exists), the scenarios, the `mesh-echo` test application and the load
//! harness. Nothing is implemented yet (see issues 6 and 7).
