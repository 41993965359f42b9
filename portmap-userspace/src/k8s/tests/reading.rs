//! Reading files and directories.

use std::path::PathBuf;

use super::*;

#[test]
fn directory_reads_yaml_yml_json_in_name_order() {
    let dir = PathBuf::from(format!("{TESTDATA}/dir"));
    let m = read_manifests(std::slice::from_ref(&dir)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((m.services.len(), m.pods.len()), (1, 1));
    assert_eq!(m.services[0].source.file, Some(dir.join("10-service.yaml")));
    assert_eq!(m.pods[0].source.file, Some(dir.join("20-pod.yml")));
    assert_eq!(m.pods[0].source.document, 1);
    assert_eq!(m.pods[0].namespace, "default");
    assert_eq!(
        m.warnings,
        [format!(
            "{}: ConfigMap default/echo-config: v1 ConfigMap is not read: ignored (portmap \
             reads v1 Service, discovery.k8s.io/v1 EndpointSlice and v1 Pod)",
            dir.join("30-config.json").display()
        )]
    );
    let t = translate(&m, &node(), None).unwrap();
    let s = unit(&t, "default/echo:7/udp ipv4 internal");
    assert_eq!(endpoints(s), ["198.19.0.7:7"]);

    // The same file twice (directly and in its directory) is read once.
    let both = [dir.clone(), dir.join("20-pod.yml")];
    assert_eq!(read_manifests(&both).unwrap().pods.len(), 1);
    // A file named directly is read whatever its name: this one is bad.
    let err = read_manifests(&[dir.join("notes.txt")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("notes.txt: document 1: line "), "{err}");
}

#[test]
fn missing_path_is_an_error() {
    let err = read_manifests(&[PathBuf::from("/nonexistent/portmap.yaml")]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "/nonexistent/portmap.yaml: cannot read: No such file or directory (os error 2)"
    );
}

#[test]
fn lists_and_typed_lists() {
    let text = r#"
apiVersion: v1
kind: ServiceList
items:
- apiVersion: v1
  kind: Service
  metadata: {name: a, namespace: x}
  spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}
- apiVersion: v1
  kind: Service
  metadata: {name: b, namespace: x}
  spec:
    clusterIP: 10.96.0.2
    ports: [{port: 80, targetPort: [1]}]
"#;
    let err = Manifests::parse("l.yaml", text).unwrap_err();
    assert_eq!(
        err.to_string(),
        "l.yaml: Service x/b: spec.ports[0].targetPort: invalid type: sequence, expected \
         IntOrString"
    );
    let m = parse(&text.replace("targetPort: [1]", "targetPort: 81"));
    assert_eq!(m.services[1].source.item, Some(1));
    assert_eq!(m.services[1].source.object, "Service x/b");
}
