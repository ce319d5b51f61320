// Package cri is the CRI proxy that sits between kubelet and containerd.
//
// Every RuntimeService and ImageService call is forwarded to the downstream
// container runtime unchanged: requests, responses, status codes and messages,
// sandbox and container IDs, and the URLs returned by Exec/Attach/PortForward.
// Methods the proxy does not know (a newer kubelet's CRI) and streaming RPCs
// such as GetContainerEvents are forwarded byte-for-byte as well.
//
// Design (forward.go, sandbox.go): the proxy decodes only the three RPCs it
// hooks (RunPodSandbox, StopPodSandbox, RemovePodSandbox). Every other unary
// method of runtime.v1.RuntimeService and runtime.v1.ImageService is
// registered with a raw handler that carries the serialized request and
// response without decoding them, and everything else (the server-streaming
// methods such as GetContainerEvents, and any method of a newer CRI) reaches
// grpc's UnknownServiceHandler, a raw stream relay. Not decoding keeps the
// added latency low (no unmarshal/marshal of large ListContainers answers),
// makes forwarding independent of the cri-api version compiled into the
// proxy, and means no method can be forgotten: what is not hooked is
// forwarded as is. Typed forwarding of all ~40 methods was the alternative;
// it costs a decode and an encode per call for no gain.
//
// The proxy keeps no state of its own: containerd stays the source of truth,
// so restarting the proxy never disturbs running pods.
package cri
