// Package cri is the CRI proxy that sits between kubelet and containerd.
//
// Every RuntimeService and ImageService call is forwarded to the downstream
// container runtime unchanged: requests, responses, status codes and messages,
// sandbox and container IDs, and the URLs returned by Exec/Attach/PortForward.
// Methods the proxy does not know (a newer kubelet's CRI) and streaming RPCs
// such as GetContainerEvents are forwarded byte-for-byte as well.
//
// Design: the proxy decodes only the three RPCs it hooks (RunPodSandbox,
// StopPodSandbox, RemovePodSandbox; see sandbox.go). Every other method is
// routed by grpc's UnknownServiceHandler to a raw forwarder (forward.go) that
// carries the serialized message without decoding it. This keeps the added
// latency low (no unmarshal/marshal of large ListContainers responses), makes
// forwarding independent of the cri-api version compiled into the proxy, and
// means a typed method can never be forgotten: anything not hooked is
// forwarded as is.
//
// The proxy keeps no state of its own: containerd stays the source of truth,
// so restarting the proxy never disturbs running pods.
package cri
