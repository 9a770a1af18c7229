package schedulertest

import (
	"reflect"
	"slices"
	"testing"

	config "k8s.io/kubernetes/pkg/scheduler/apis/config"
	"k8s.io/kubernetes/pkg/scheduler/framework/plugins"

	"github.com/pennysched/penny/deploy"
)

// DeployedProfile keeps, of the out-of-tree plugins, only the one under test,
// at every extension point the profile has: a plugin's package cannot
// register the others, and a profile that names one it cannot build fails
// to start. The extension points are read here by their type, apart from
// the code under test, so that one it does not know of is still checked.
func TestDeployedProfileKeepsOnlyThePluginUnderTest(t *testing.T) {
	inTree := plugins.NewInTreeRegistry()
	// each calls fn for every plugin enabled at an extension point of pl.
	each := func(pl *config.Plugins, fn func(point, plugin string)) {
		v := reflect.ValueOf(pl).Elem()
		for i := range v.NumField() {
			if set, ok := v.Field(i).Interface().(config.PluginSet); ok {
				for _, e := range set.Enabled {
					fn(v.Type().Field(i).Name, e.Name)
				}
			}
		}
	}
	var outOfTree []string
	each(Profile(t, deploy.SchedulerConfig).Plugins, func(_, plugin string) {
		if _, ok := inTree[plugin]; !ok && !slices.Contains(outOfTree, plugin) {
			outOfTree = append(outOfTree, plugin)
		}
	})
	if len(outOfTree) < 2 {
		t.Fatalf("the deployed profile enables out-of-tree plugins %v; want at least two for the test to say anything", outOfTree)
	}
	for _, plugin := range outOfTree {
		kept := false
		each(DeployedProfile(t, plugin, nil).Plugins, func(point, name string) {
			if _, ok := inTree[name]; ok {
				return
			}
			if name != plugin {
				t.Errorf("DeployedProfile(%s) keeps %s under %s", plugin, name, point)
			}
			kept = true
		})
		if !kept {
			t.Errorf("DeployedProfile(%s) enables it at no extension point", plugin)
		}
	}
}
