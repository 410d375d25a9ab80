package apiserver

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	authzv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/yaml"
)

// ControllerServiceAccount is the ServiceAccount of `flashpv controller`
// in deploy/kubernetes.
const ControllerServiceAccount = "flashpv-controller"

// ControllerConfig returns a client configuration that acts as `flashpv
// controller` deployed in namespace ns: its ServiceAccount there, with
// the rules of deploy/kubernetes/controller-clusterrole.yaml (a copy named
// after ns) and controller-role.yaml (in ns). A request the deployment's
// RBAC does not allow is refused as it would be in a cluster.
func (s *Server) ControllerConfig(t testing.TB, ns string) *rest.Config {
	t.Helper()
	ctx := context.Background()
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	var cr rbacv1.ClusterRole
	var role rbacv1.Role
	for path, obj := range map[string]any{"controller-clusterrole.yaml": &cr, "controller-role.yaml": &role} {
		b, err := os.ReadFile(filepath.Join(root, "deploy", "kubernetes", path))
		if err != nil {
			t.Fatal(err)
		}
		if err := yaml.UnmarshalStrict(b, obj); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
	}
	rbac := s.Client.RbacV1()
	subject := []rbacv1.Subject{{Kind: "ServiceAccount", Name: ControllerServiceAccount, Namespace: ns}}
	cr.ObjectMeta = metav1.ObjectMeta{Name: ns + "-" + cr.Name}
	role.ObjectMeta = metav1.ObjectMeta{Name: role.Name, Namespace: ns}
	steps := []func() error{
		func() error {
			_, err := s.Client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: ControllerServiceAccount}}, metav1.CreateOptions{})
			return err
		},
		func() error { _, err := rbac.ClusterRoles().Create(ctx, &cr, metav1.CreateOptions{}); return err },
		func() error { _, err := rbac.Roles(ns).Create(ctx, &role, metav1.CreateOptions{}); return err },
		func() error {
			_, err := rbac.ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: cr.Name}, Subjects: subject,
				RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: cr.Name}}, metav1.CreateOptions{})
			return err
		},
		func() error {
			_, err := rbac.RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: role.Name, Namespace: ns}, Subjects: subject,
				RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name}}, metav1.CreateOptions{})
			return err
		},
	}
	for _, step := range steps {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		_ = rbac.ClusterRoleBindings().Delete(ctx, cr.Name, metav1.DeleteOptions{})
		_ = rbac.ClusterRoles().Delete(ctx, cr.Name, metav1.DeleteOptions{})
	})
	user := "system:serviceaccount:" + ns + ":" + ControllerServiceAccount
	groups := []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"}
	// The authorizer learns new roles through a watch: wait until it
	// knows both bindings.
	for _, attrs := range []authzv1.ResourceAttributes{
		{Verb: "list", Resource: "nodes"},
		{Verb: "create", Resource: "secrets", Namespace: ns},
	} {
		if err := s.waitAllowed(ctx, user, groups, attrs); err != nil {
			t.Fatal(err)
		}
	}
	cfg := rest.CopyConfig(s.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: groups}
	return cfg
}

func (s *Server) waitAllowed(ctx context.Context, user string, groups []string, attrs authzv1.ResourceAttributes) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		sar, err := s.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authzv1.SubjectAccessReview{
			Spec: authzv1.SubjectAccessReviewSpec{User: user, Groups: groups, ResourceAttributes: &attrs}}, metav1.CreateOptions{})
		if err == nil && sar.Status.Allowed {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s is not allowed to %s %s (%v, %+v)", user, attrs.Verb, attrs.Resource, err, sar)
		case <-tick.C:
		}
	}
}

// Kubeconfig writes cfg (the server's address, the admin's certificate and
// cfg's impersonation, as ControllerConfig sets it) to a kubeconfig file
// in a temp dir of the test, for code that takes a --kubeconfig.
func Kubeconfig(t testing.TB, cfg *rest.Config) string {
	t.Helper()
	kc := clientcmdapi.NewConfig()
	kc.Clusters["test"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["test"] = &clientcmdapi.AuthInfo{ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData,
		Impersonate: cfg.Impersonate.UserName, ImpersonateGroups: cfg.Impersonate.Groups}
	kc.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "test"}
	kc.CurrentContext = "test"
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatal(err)
	}
	return path
}
