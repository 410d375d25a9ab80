package clustercontroller

import (
	"context"
	"errors"
	"slices"
	"testing"

	authnv1 "k8s.io/api/authentication/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	corelisters "k8s.io/client-go/listers/core/v1"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"

	"github.com/flashpv/flashpv/pkg/transfer/broker"
)

const nodeSA = "system:serviceaccount:flashpv:flashpv-node"

// reviewTokens answers TokenReviews from reviews (token -> status), as an
// API server would for a review that asks for the broker's audience.
func reviewTokens(t *testing.T, client *fake.Clientset, reviews map[string]authnv1.TokenReviewStatus) {
	client.PrependReactor("create", "tokenreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		tr := a.(k8stesting.CreateAction).GetObject().(*authnv1.TokenReview)
		if !slices.Equal(tr.Spec.Audiences, []string{broker.Audience}) {
			t.Errorf("TokenReview for audiences %v", tr.Spec.Audiences)
		}
		if tr.Spec.Token == "api-down" {
			return true, nil, errors.New("connection refused")
		}
		out := tr.DeepCopy()
		out.Status = reviews[tr.Spec.Token]
		return true, out, nil
	})
}

func reviewed(user string, extra map[string]authnv1.ExtraValue) authnv1.TokenReviewStatus {
	return authnv1.TokenReviewStatus{Authenticated: true, Audiences: []string{broker.Audience},
		User: authnv1.UserInfo{Username: user, Extra: extra}}
}

func TestAuthenticate(t *testing.T) {
	podExtra := func(name, uid string) map[string]authnv1.ExtraValue {
		return map[string]authnv1.ExtraValue{extraPodName: {name}, extraPodUID: {uid}}
	}
	reviews := map[string]authnv1.TokenReviewStatus{
		"bound":          reviewed(nodeSA, map[string]authnv1.ExtraValue{extraNodeName: {"n2"}, extraPodName: {"flashpv-node-a"}}),
		"pod":            reviewed(nodeSA, podExtra("flashpv-node-a", "flashpv-node-a-uid")),
		"pod-other-uid":  reviewed(nodeSA, podExtra("flashpv-node-a", "recreated")),
		"pod-not-cached": reviewed(nodeSA, podExtra("flashpv-node-new", "new-uid")),
		"pod-no-uid":     reviewed(nodeSA, map[string]authnv1.ExtraValue{extraPodName: {"flashpv-node-a"}}),
		"unbound":        reviewed(nodeSA, nil),
		"expired":        {Authenticated: false, Error: "token has expired"},
		"other-sa":       reviewed("system:serviceaccount:flashpv:flashpv-controller", map[string]authnv1.ExtraValue{extraNodeName: {"n2"}}),
		"other-ns":       reviewed("system:serviceaccount:apps:flashpv-node", map[string]authnv1.ExtraValue{extraNodeName: {"n2"}}),
		"user":           reviewed("alice", map[string]authnv1.ExtraValue{extraNodeName: {"n2"}}),
		"no-audience": {Authenticated: true, User: authnv1.UserInfo{Username: nodeSA,
			Extra: map[string]authnv1.ExtraValue{extraNodeName: {"n2"}}}},
		"two-nodes": reviewed(nodeSA, map[string]authnv1.ExtraValue{extraNodeName: {"n2", "n3"}}),
	}
	client := fake.NewClientset()
	reviewTokens(t, client, reviews)
	pods := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	_ = pods.Add(nodePod("flashpv-node-a", "n1", "10.0.0.1"))
	a := &tokenAuthenticator{client: client, namespace: testNS, serviceAccount: "flashpv-node", pods: corelisters.NewPodLister(pods)}
	for _, tc := range []struct {
		token, node, code string
	}{
		{"bound", "n2", ""},
		{"pod", "n1", ""},
		{"pod-other-uid", "", broker.CodeUnauthenticated},
		{"pod-not-cached", "", broker.CodeUnavailable},
		{"pod-no-uid", "", broker.CodeUnauthenticated},
		{"unbound", "", broker.CodeUnauthenticated},
		{"expired", "", broker.CodeUnauthenticated},
		{"unknown", "", broker.CodeUnauthenticated},
		{"other-sa", "", broker.CodeUnauthenticated},
		{"other-ns", "", broker.CodeUnauthenticated},
		{"user", "", broker.CodeUnauthenticated},
		{"no-audience", "", broker.CodeUnauthenticated},
		{"two-nodes", "", broker.CodeUnauthenticated},
		{"api-down", "", broker.CodeInternal},
	} {
		t.Run(tc.token, func(t *testing.T) {
			node, err := a.Authenticate(context.Background(), tc.token)
			if tc.code == "" {
				if err != nil || node != tc.node {
					t.Fatalf("node %q, %v; want %s", node, err, tc.node)
				}
				return
			}
			var e *broker.Error
			code := broker.CodeInternal // what the server makes of other errors
			if errors.As(err, &e) {
				code = e.Code
			}
			if err == nil || node != "" || code != tc.code {
				t.Fatalf("node %q, %v; want %s", node, err, tc.code)
			}
		})
	}
}
