package configmaplines

import (
	"context"
	"errors"
	"fmt"

	authorizationv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	authorizationv1client "k8s.io/client-go/kubernetes/typed/authorization/v1"
)

// Verbs are what a Key does to its ConfigMap: get to read it, update to
// write it, and create when it is missing.
var Verbs = []string{"get", "update", "create"}

// Access asks the API server, with a SelfSubjectAccessReview per verb of
// Verbs, which of them the client's own identity may not do
// on the ConfigMap namespace/name. denied holds those the authorizer refused
// outright; err is set when a review could not be made (the API server is
// unreachable, reviews are not allowed) or the authorizer could not decide,
// and then says which verbs are left unknown.
func Access(ctx context.Context, client authorizationv1client.SelfSubjectAccessReviewsGetter, namespace, name string) (denied []string, err error) {
	var errs []error
	for _, verb := range Verbs {
		attrs := &authorizationv1.ResourceAttributes{Namespace: namespace, Verb: verb, Version: "v1", Resource: "configmaps", Name: name}
		if verb == "create" {
			// A create carries no name to the authorizer, so a Role's
			// resourceNames never grant it: review it as it is made.
			attrs.Name = ""
		}
		r, err := client.SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
			Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: attrs},
		}, metav1.CreateOptions{})
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%s: %w", verb, err))
		case r.Status.Allowed:
		case r.Status.Denied || r.Status.EvaluationError == "":
			denied = append(denied, verb)
		default:
			errs = append(errs, fmt.Errorf("%s: the authorizer could not decide: %s", verb, r.Status.EvaluationError))
		}
	}
	if len(errs) > 0 {
		return denied, fmt.Errorf("reviewing access to configmap %s/%s: %w", namespace, name, errors.Join(errs...))
	}
	return denied, nil
}
