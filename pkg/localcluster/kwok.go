package localcluster

import (
	"context"
	"fmt"
	"io"
	"strings"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/clock"
	nodefast "sigs.k8s.io/kwok/kustomize/stage/node/fast"
	podfast "sigs.k8s.io/kwok/kustomize/stage/pod/fast"
	"sigs.k8s.io/kwok/pkg/apis/internalversion"
	kwokclient "sigs.k8s.io/kwok/pkg/client/clientset/versioned"
	"sigs.k8s.io/kwok/pkg/config"
	"sigs.k8s.io/kwok/pkg/kwok/controllers"
	kwoklog "sigs.k8s.io/kwok/pkg/log"
	kwokclientset "sigs.k8s.io/kwok/pkg/utils/client"
)

// AnnotationRunFor makes a simulated pod finish successfully after the given
// duration ("90s", "10m"): KWOK's own pod-complete annotation. Pods without
// it run until deleted, like a trainer or a server would.
const AnnotationRunFor = "pod-complete.stage.kwok.x-k8s.io/delay"

// kwokStages are KWOK's "fast" node and pod lifecycles, with completion
// driven by AnnotationRunFor instead of "every Job pod at once".
func kwokStages() (map[internalversion.StageResourceRef][]*internalversion.Stage, error) {
	var stages []*internalversion.Stage
	for _, src := range []string{nodefast.DefaultNodeInit, podfast.DefaultPodReady, podfast.DefaultPodDelete, podfast.DefaultPodComplete} {
		s, err := config.UnmarshalWithType[*internalversion.Stage](src)
		if err != nil {
			return nil, fmt.Errorf("KWOK stage: %w", err)
		}
		stages = append(stages, s)
	}
	complete := stages[len(stages)-1]
	var keep []internalversion.MatchExpression
	for _, e := range complete.Spec.Selector.MatchExpressions {
		if e.JQ != nil && strings.Contains(e.JQ.Key, "ownerReferences") {
			continue
		}
		keep = append(keep, e)
	}
	annotation := fmt.Sprintf(".metadata.annotations[%q]", AnnotationRunFor)
	complete.Spec.Selector.MatchExpressions = append(keep, internalversion.MatchExpression{
		JQ: &internalversion.SelectorJQ{Key: annotation, Operator: internalversion.SelectorOpExists},
	})
	complete.Spec.Delay = &internalversion.StageDelay{
		DurationFrom: &internalversion.ExpressionFrom{JQ: &internalversion.ExpressionJQ{Expression: annotation}},
	}
	// A kubelet stops a deleted pod's containers and records the terminal
	// phase before the pod object goes; KWOK's fast stages delete it at
	// once. Controllers that wait for the terminal phase (the Job
	// controller with a podFailurePolicy, which then replaces the pod) need
	// the kubelet's order: terminate first, then delete.
	terminate, err := config.UnmarshalWithType[*internalversion.Stage](podTerminateStage)
	if err != nil {
		return nil, fmt.Errorf("KWOK stage: %w", err)
	}
	for _, s := range stages {
		if s.Name == "pod-delete" {
			s.Spec.Selector.MatchExpressions = append(s.Spec.Selector.MatchExpressions, internalversion.MatchExpression{
				JQ: &internalversion.SelectorJQ{Key: ".status.phase", Operator: internalversion.SelectorOpNotIn, Values: []string{"Running", "Pending"}},
			})
		}
	}
	stages = append(stages, terminate)
	grouped := map[internalversion.StageResourceRef][]*internalversion.Stage{}
	for _, s := range stages {
		grouped[s.Spec.ResourceRef] = append(grouped[s.Spec.ResourceRef], s)
	}
	return grouped, nil
}

// podTerminateStage is what a kubelet does to a pod being deleted: its
// containers get SIGTERM and exit, and the pod's phase becomes Failed.
const podTerminateStage = `
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: pod-terminate
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'Exists'
    - key: '.status.phase'
      operator: 'In'
      values: ['Running', 'Pending']
  next:
    statusTemplate: |
      {{ $now := Now }}
      containerStatuses:
      {{ range $index, $item := .spec.containers }}
      - image: {{ $item.image | Quote }}
        name: {{ $item.name | Quote }}
        ready: false
        restartCount: 0
        started: false
        state:
          terminated:
            exitCode: 143
            finishedAt: {{ $now | Quote }}
            reason: Error
            startedAt: {{ $now | Quote }}
      {{ end }}
      phase: Failed
`

// startKWOK runs KWOK's controller in-process: it keeps the simulated nodes
// Ready and moves pods bound to them through their lifecycle.
func startKWOK(ctx context.Context, kubeconfig string, cfg *rest.Config, logTo io.Writer) error {
	ctx = kwoklog.NewContext(ctx, kwoklog.NewLogger(logTo, kwoklog.LevelWarn))
	stages, err := kwokStages()
	if err != nil {
		return err
	}
	cs, err := kwokclientset.NewClientset("", kubeconfig)
	if err != nil {
		return err
	}
	dynamicClient, err := cs.ToDynamicClient()
	if err != nil {
		return err
	}
	restMapper, err := cs.ToRESTMapper()
	if err != nil {
		return err
	}
	restCfg := rest.CopyConfig(cfg)
	restCfg.UserAgent = "kwok-controller"
	typed, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return err
	}
	typedKwok, err := kwokclient.NewForConfig(restCfg)
	if err != nil {
		return err
	}
	ctr, err := controllers.NewController(controllers.Config{
		Clock:                             clock.RealClock{},
		DynamicClient:                     dynamicClient,
		RESTClient:                        typed.Discovery().RESTClient(),
		RESTMapper:                        restMapper,
		ImpersonatingDynamicClient:        cs.ToImpersonatingDynamicClient(),
		ImpersonatingTypedClient:          cs.ToImpersonatingTypedClient(),
		TypedClient:                       typed,
		TypedKwokClient:                   typedKwok,
		ManageNodesWithAnnotationSelector: kwokNodeAnnotation + "=" + kwokNodeValue,
		CIDR:                              "10.0.0.1/16",
		NodeIP:                            "127.0.0.1",
		LocalStages:                       stages,
		PodPlayStageParallelism:           4,
		NodePlayStageParallelism:          4,
		PodsOnNodeSyncParallelism:         4,
		ID:                                "penny-local",
	})
	if err != nil {
		return fmt.Errorf("KWOK: %w", err)
	}
	if err := ctr.Start(ctx); err != nil {
		return fmt.Errorf("KWOK: %w", err)
	}
	return nil
}
