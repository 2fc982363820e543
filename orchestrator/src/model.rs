//! The Kubernetes-shaped resources skiff serves: types, defaults, validation, manifests.
