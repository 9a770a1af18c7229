package localcluster

import (
	"context"
	"fmt"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
	cacheddiscovery "k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/metadata/metadatainformer"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/scale"
	"k8s.io/controller-manager/pkg/informerfactory"
	"k8s.io/klog/v2"
	"k8s.io/kubernetes/pkg/controller/deployment"
	"k8s.io/kubernetes/pkg/controller/disruption"
	"k8s.io/kubernetes/pkg/controller/garbagecollector"
	"k8s.io/kubernetes/pkg/controller/job"
	"k8s.io/kubernetes/pkg/controller/replicaset"
	"k8s.io/kubernetes/pkg/controller/serviceaccount"
)

// startControllers runs the kube-controller-manager controllers a GPU
// workload needs, in-process: Jobs and Deployments create their pods, every
// namespace gets its default ServiceAccount, PodDisruptionBudgets their
// status, and owners' deletion cascades.
// They are upstream's controllers, not imitations, so the pods they create
// look exactly as they would on a real cluster.
//
// The returned stopped blocks, once ctx is done, until they have stopped.
func startControllers(ctx context.Context, cfg *rest.Config) (stopped func(), err error) {
	cfg = rest.CopyConfig(cfg)
	cfg.UserAgent = "penny-local-controllers"
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	factory := informers.NewSharedInformerFactory(client, 0)
	pods := factory.Core().V1().Pods()

	jobs, err := job.NewController(ctx, client, pods, factory.Batch().V1().Jobs(), nil, nil)
	if err != nil {
		return nil, fmt.Errorf("job controller: %w", err)
	}
	deployments, err := deployment.NewDeploymentController(ctx, factory.Apps().V1().Deployments(), factory.Apps().V1().ReplicaSets(), pods, client)
	if err != nil {
		return nil, fmt.Errorf("deployment controller: %w", err)
	}
	replicaSets := replicaset.NewReplicaSetController(ctx, factory.Apps().V1().ReplicaSets(), pods, client, 500)
	serviceAccounts, err := serviceaccount.NewServiceAccountsController(klog.FromContext(ctx),
		factory.Core().V1().ServiceAccounts(), factory.Core().V1().Namespaces(), client,
		serviceaccount.DefaultServiceAccountsControllerOptions())
	if err != nil {
		return nil, fmt.Errorf("serviceaccount controller: %w", err)
	}
	// PodDisruptionBudgets get their status, so that evictions, Penny's
	// included, meet the budgets as on a real cluster.
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(cacheddiscovery.NewMemCacheClient(client.Discovery()))
	scales, err := scale.NewForConfig(cfg, mapper, dynamic.LegacyAPIPathResolverFunc, scale.NewDiscoveryScaleKindResolver(client.Discovery()))
	if err != nil {
		return nil, fmt.Errorf("scale client: %w", err)
	}
	budgets := disruption.NewDisruptionController(ctx, pods, factory.Policy().V1().PodDisruptionBudgets(),
		factory.Core().V1().ReplicationControllers(), factory.Apps().V1().ReplicaSets(), factory.Apps().V1().Deployments(),
		factory.Apps().V1().StatefulSets(), client, mapper, scales, client.Discovery())
	startGC, err := garbageCollector(ctx, cfg, client, factory, mapper)
	if err != nil {
		return nil, err
	}

	factory.Start(ctx.Done())
	var running sync.WaitGroup
	running.Go(func() { jobs.Run(ctx, 2) })
	running.Go(func() { deployments.Run(ctx, 2) })
	running.Go(func() { replicaSets.Run(ctx, 2) })
	running.Go(func() { serviceAccounts.Run(ctx, 1) })
	running.Go(func() { budgets.Run(ctx, 1) })
	startGC(&running)
	return func() {
		running.Wait()
		factory.Shutdown()
	}, nil
}

// garbageCollector returns the start of the garbage collector; it resets
// mapper, which it shares with the other controllers, as it resyncs.
func garbageCollector(ctx context.Context, cfg *rest.Config, client kubernetes.Interface, factory informers.SharedInformerFactory, mapper *restmapper.DeferredDiscoveryRESTMapper) (func(*sync.WaitGroup), error) {
	metadataClient, err := metadata.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	mapper.Reset()
	metadataInformers := metadatainformer.NewSharedInformerFactory(metadataClient, 0)
	started := make(chan struct{})
	gc, err := garbagecollector.NewGarbageCollector(ctx, client, metadataClient, mapper,
		garbagecollector.DefaultIgnoredResources(), informerfactory.NewInformerFactory(factory, metadataInformers), started)
	if err != nil {
		return nil, fmt.Errorf("garbage collector: %w", err)
	}
	return func(running *sync.WaitGroup) {
		metadataInformers.Start(ctx.Done())
		close(started)
		const resync = 5 * time.Second
		running.Go(func() { wait.UntilWithContext(ctx, func(context.Context) { mapper.Reset() }, resync) })
		running.Go(func() { gc.Run(ctx, 2, resync) })
		running.Go(func() { gc.Sync(ctx, client.Discovery(), resync) })
		running.Go(func() { <-ctx.Done(); metadataInformers.Shutdown() })
	}, nil
}
