//! Kubernetes objects (Services, EndpointSlices, Pods) from manifest files,
//! translated into the desired state. (Being written.)
