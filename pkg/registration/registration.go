// Package registration registers flashpv with the kubelet through the plugin
// registration API, so the DaemonSet needs no node-driver-registrar sidecar.
// The kubelet watches its plugins_registry directory, finds our socket there,
// asks GetInfo, and reports the outcome with NotifyRegistrationStatus.
package registration

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"

	"google.golang.org/grpc"
	"k8s.io/klog/v2"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"

	"github.com/flashpv/flashpv/pkg/unixsock"
)

// supportedVersions are the CSI versions flashpv speaks, as the kubelet wants
// them listed.
var supportedVersions = []string{"1.0.0"}

// Server answers the kubelet's registration calls.
type Server struct {
	registerapi.UnimplementedRegistrationServer
	driver   string
	endpoint string

	mu     sync.Mutex
	failed error // the kubelet's last refusal, nil once it accepts
}

// New returns a server that registers driver with its CSI socket at
// endpoint, a path as the kubelet sees it.
func New(driver, endpoint string) *Server {
	return &Server{driver: driver, endpoint: endpoint}
}

// SocketPath is where the registration socket goes in the kubelet's
// registration directory.
func SocketPath(registrationDir, driver string) string {
	return filepath.Join(registrationDir, driver+"-reg.sock")
}

func (s *Server) GetInfo(context.Context, *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	return &registerapi.PluginInfo{
		Type:              registerapi.CSIPlugin,
		Name:              s.driver,
		Endpoint:          s.endpoint,
		SupportedVersions: supportedVersions,
	}, nil
}

func (s *Server) NotifyRegistrationStatus(_ context.Context, st *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st.GetPluginRegistered() {
		klog.InfoS("Registered with the kubelet", "driver", s.driver, "endpoint", s.endpoint)
		s.failed = nil
	} else {
		s.failed = fmt.Errorf("the kubelet refused the registration: %s", st.GetError())
		klog.ErrorS(s.failed, "Registration failed", "driver", s.driver)
	}
	return &registerapi.RegistrationStatusResponse{}, nil
}

// Healthy returns the kubelet's refusal, if it refused.
func (s *Server) Healthy() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.failed
}

// Serve serves the registration API at socket until ctx is done.
func (s *Server) Serve(ctx context.Context, socket string) error {
	lis, err := unixsock.Listen(socket)
	if err != nil {
		return err
	}
	srv := grpc.NewServer()
	registerapi.RegisterRegistrationServer(srv, s)
	go func() {
		<-ctx.Done()
		srv.Stop() // also removes the socket, which deregisters us
	}()
	klog.InfoS("Serving kubelet plugin registration", "socket", socket)
	if err := srv.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return err
	}
	return nil
}
