package driver

import (
	"context"
	"errors"
	"net"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"k8s.io/klog/v2"
)

// Serve serves the three CSI services on lis (from unixsock.Listen) until ctx
// is done, then stops gracefully.
func (d *Driver) Serve(ctx context.Context, lis net.Listener) error {
	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(logCalls, d.observe))
	csi.RegisterIdentityServer(srv, &Identity{d: d})
	csi.RegisterControllerServer(srv, &Controller{d: d})
	csi.RegisterNodeServer(srv, &Node{d: d})

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	klog.InfoS("Serving CSI", "endpoint", lis.Addr().String(), "driver", Name, "node", d.nodeID, "pools", d.poolNames)
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	klog.InfoS("Stopping: letting calls in flight finish")
	// The DaemonSet's pod has 30 s (terminationGracePeriodSeconds) before
	// it is killed: what is still running after 25 s is ended, so that a
	// filesystem frozen for a copy is thawed before the kill.
	deadline := time.Now().Add(25 * time.Second)
	stopped := make(chan struct{})
	go func() { srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(time.Until(deadline)):
		srv.Stop()
	}
	d.locks.endDetached(deadline)
	// A stop that came before srv.Serve took the listener leaves it open,
	// and a new process would find the socket still answering.
	lis.Close()
	return nil
}

// logCalls is the one place that logs RPCs: method, duration and outcome, and
// at high verbosity the request with its secrets removed.
func logCalls(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	if klog.V(5).Enabled() {
		if m, ok := req.(proto.Message); ok {
			klog.V(5).InfoS("Call", "method", info.FullMethod, "request", withoutSecrets(m))
		}
	}
	resp, err := handler(ctx, req)
	took := time.Since(start)
	if err != nil {
		klog.ErrorS(errors.New(status.Convert(err).Message()), "Call failed", "method", info.FullMethod, "code", status.Code(err), "duration", took)
	} else {
		klog.V(3).InfoS("Call done", "method", info.FullMethod, "duration", took)
	}
	return resp, err
}

// withoutSecrets returns a copy of m with every field marked csi_secret
// cleared.
func withoutSecrets(m proto.Message) proto.Message {
	c := proto.Clone(m)
	r := c.ProtoReflect()
	r.Range(func(fd protoreflect.FieldDescriptor, _ protoreflect.Value) bool {
		if opts := fd.Options(); opts != nil && proto.HasExtension(opts, csi.E_CsiSecret) && proto.GetExtension(opts, csi.E_CsiSecret).(bool) {
			r.Clear(fd)
		}
		return true
	})
	return c
}
