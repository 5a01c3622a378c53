package deploy

import (
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/supervisor-dev/supervisor/listener"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// manifest is one YAML document of deploy/kubernetes, decoded.
type manifest struct {
	where string // file and document number, for messages
	obj   any    // *appsv1.Deployment, *corev1.ConfigMap or *corev1.Service
}

// kinds are the API types the manifests may use, by apiVersion and kind.
var kinds = map[string]func() any{
	"apps/v1 Deployment": func() any { return &appsv1.Deployment{} },
	"v1 ConfigMap":       func() any { return &corev1.ConfigMap{} },
	"v1 Service":         func() any { return &corev1.Service{} },
}

var documentSeparator = regexp.MustCompile(`(?m)^---[ \t]*(#.*)?$`)

// readManifests decodes every document of every YAML file in
// deploy/kubernetes into its upstream API type as strictly as the API
// server does (kubectl apply --validate=strict): a duplicate key, a field
// the type does not have, or one spelled in another case is an error.
func readManifests(t *testing.T) []manifest {
	t.Helper()
	files, err := filepath.Glob("kubernetes/*.y*ml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no manifest in deploy/kubernetes")
	}
	var ms []manifest
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range documentSeparator.Split(string(b), -1) {
			where := file + " document " + strconv.Itoa(i+1)
			j, err := yaml.YAMLToJSONStrict([]byte(doc))
			if err != nil {
				t.Errorf("%s: %v", where, err)
				continue
			}
			if string(j) == "null" {
				continue // only comments
			}
			var tm struct{ APIVersion, Kind string }
			if err := json.Unmarshal(j, &tm); err != nil {
				t.Errorf("%s: %v", where, err)
				continue
			}
			newObj, ok := kinds[tm.APIVersion+" "+tm.Kind]
			if !ok {
				t.Errorf("%s: apiVersion %q kind %q: not a type this test knows: add it to kinds", where, tm.APIVersion, tm.Kind)
				continue
			}
			obj := newObj()
			strict, err := kjson.UnmarshalStrict(j, obj, kjson.DisallowDuplicateFields, kjson.DisallowUnknownFields)
			if err != nil {
				t.Errorf("%s: %s: %v", where, tm.Kind, err)
				continue
			}
			for _, e := range strict {
				t.Errorf("%s: %s: %v", where, tm.Kind, e)
			}
			ms = append(ms, manifest{where: where, obj: obj})
		}
	}
	return ms
}

// objectsOf returns the manifests of type T, in file order.
func objectsOf[T any](ms []manifest) []T {
	var out []T
	for _, m := range ms {
		if o, ok := m.obj.(T); ok {
			out = append(out, o)
		}
	}
	return out
}

func TestKubernetesManifestsDecodeStrictly(t *testing.T) {
	ms := readManifests(t)
	if n := len(objectsOf[*appsv1.Deployment](ms)); n != 1 {
		t.Errorf("%d Deployments, want 1", n)
	}
	if len(objectsOf[*corev1.ConfigMap](ms)) == 0 {
		t.Error("no ConfigMap: the pod's supervisor config belongs in one")
	}
	for _, m := range ms {
		name := ""
		switch o := m.obj.(type) {
		case *appsv1.Deployment:
			name = o.Name
		case *corev1.ConfigMap:
			name = o.Name
		case *corev1.Service:
			name = o.Name
		}
		if name == "" {
			t.Errorf("%s: no metadata.name", m.where)
		}
	}
}

// The pod runs the master with its config from the ConfigMap, probes the
// master's health endpoints on the metrics port that config opens, gives
// the master the time its config needs to stop, and has no preStop sleep.
func TestKubernetesDeployment(t *testing.T) {
	ms := readManifests(t)
	if t.Failed() {
		t.FailNow()
	}
	configMaps := map[string]*corev1.ConfigMap{}
	for _, cm := range objectsOf[*corev1.ConfigMap](ms) {
		configMaps[cm.Name] = cm
	}
	deployments := objectsOf[*appsv1.Deployment](ms)
	if len(deployments) == 0 {
		t.Fatal("no Deployment")
	}
	for _, d := range deployments {
		t.Run(d.Name, func(t *testing.T) {
			pod := d.Spec.Template.Spec
			if d.Spec.Selector == nil || !selects(d.Spec.Selector.MatchLabels, d.Spec.Template.Labels) {
				t.Errorf("spec.selector does not select the pod template's labels %v", d.Spec.Template.Labels)
			}
			for _, c := range slices.Concat(pod.InitContainers, pod.Containers) {
				// The master keeps serving through shutdown_delay itself;
				// a preStop hook would only delay its SIGTERM.
				if c.Lifecycle != nil && c.Lifecycle.PreStop != nil {
					t.Errorf("container %s has a preStop hook: the master's shutdown_delay keeps it serving after SIGTERM, so a preStop sleep only adds its length to every shutdown", c.Name)
				}
			}
			c := masterContainer(t, pod)
			argv := slices.Concat(c.Command, c.Args)
			if argv[0] != installedBinary {
				t.Errorf("container %s runs %s: the image (deploy/Dockerfile) installs the supervisor as %s", c.Name, argv[0], installedBinary)
			}
			configArg := configFlag(argv)
			if configArg == "" {
				t.Fatalf("container %s: %q has no --config: the config belongs in the ConfigMap", c.Name, argv)
			}
			m := readMaster(t, argv, configFromConfigMap(t, pod, c, configArg, configMaps))

			// Probes: the master's health, on the metrics port it opens.
			if m.Config.Metrics == "" {
				t.Fatal("the config sets no metrics address: the probes' endpoints would not exist")
			}
			if strings.HasPrefix(m.Config.Metrics, "unix:") {
				t.Fatalf("metrics %s: the kubelet probes over TCP: give HOST:PORT", m.Config.Metrics)
			}
			host, port, err := net.SplitHostPort(m.Config.Metrics)
			if err != nil {
				t.Fatalf("metrics %s: %v", m.Config.Metrics, err)
			}
			if ip := net.ParseIP(host); host == "localhost" || (ip != nil && ip.IsLoopback()) {
				t.Errorf("metrics %s: loopback only, but the kubelet probes the pod's IP: use :%s", m.Config.Metrics, port)
			}
			metricsPort, ok := namedPort(c, "metrics")
			if !ok {
				t.Fatalf("container %s has no port named metrics", c.Name)
			}
			if strconv.Itoa(int(metricsPort)) != port {
				t.Errorf("container port metrics is %d, but the config's metrics address is %s", metricsPort, m.Config.Metrics)
			}
			checkProbe(t, c, "readinessProbe", c.ReadinessProbe, "/health/ready", metricsPort)
			checkProbe(t, c, "livenessProbe", c.LivenessProbe, "/health/live", metricsPort)
			// /health/live takes up to 1 s to say the loop does not answer.
			if p := c.LivenessProbe; p != nil && max(p.TimeoutSeconds, 1) <= 1 {
				t.Errorf("livenessProbe.timeoutSeconds %d: /health/live may take 1 s to answer 503; a 1 s timeout turns a slow answer into a restart: use 2 or more", p.TimeoutSeconds)
			}

			// Stopping: SIGTERM, shutdown_delay serving, graceful_timeout
			// for the workers, all before the kubelet's SIGKILL.
			need := stopTime(m.Config)
			if pod.TerminationGracePeriodSeconds == nil {
				t.Errorf("no terminationGracePeriodSeconds (the default is 30): give one longer than shutdown_delay + graceful_timeout = %s", need)
			} else if grace := time.Duration(*pod.TerminationGracePeriodSeconds) * time.Second; grace <= need {
				t.Errorf("terminationGracePeriodSeconds %d: not longer than shutdown_delay %s + graceful_timeout %s = %s: the kubelet would SIGKILL workers still finishing requests",
					*pod.TerminationGracePeriodSeconds, m.Config.ShutdownDelay, m.Config.GracefulTimeout, need)
			}

			// Services send traffic to a port the master binds.
			binds := tcpBindPorts(t, m.Resolved.Addrs)
			for _, s := range objectsOf[*corev1.Service](ms) {
				if len(s.Spec.Selector) == 0 || !selects(s.Spec.Selector, d.Spec.Template.Labels) {
					continue
				}
				for _, sp := range s.Spec.Ports {
					target := sp.TargetPort
					if target.Type == intstr.Int && target.IntVal == 0 {
						target = intstr.FromInt32(sp.Port) // the default: the same as port
					}
					n, ok := resolvePort(c, target)
					switch {
					case !ok:
						t.Errorf("Service %s port %s: targetPort %s is no port of container %s", s.Name, sp.Name, target.String(), c.Name)
					case !slices.Contains(binds, n):
						t.Errorf("Service %s port %s: targetPort %s is %d, which the master does not bind (its TCP binds: %v)", s.Name, sp.Name, target.String(), n, binds)
					}
				}
			}
		})
	}
	for _, s := range objectsOf[*corev1.Service](ms) {
		found := false
		for _, d := range deployments {
			found = found || (len(s.Spec.Selector) > 0 && selects(s.Spec.Selector, d.Spec.Template.Labels))
		}
		if !found {
			t.Errorf("Service %s: its selector %v selects no Deployment's pods", s.Name, s.Spec.Selector)
		}
	}
}

// masterContainer is the pod's one container that runs the supervisor.
func masterContainer(t *testing.T, pod corev1.PodSpec) corev1.Container {
	t.Helper()
	var masters []corev1.Container
	for _, c := range pod.Containers {
		if argv := slices.Concat(c.Command, c.Args); len(argv) > 0 && filepath.Base(argv[0]) == "supervisor" {
			masters = append(masters, c)
		}
	}
	if len(masters) != 1 {
		t.Fatalf("%d containers run the supervisor (command: /path/to/supervisor ...), want 1", len(masters))
	}
	return masters[0]
}

// configFlag is the --config argument of a supervisor command line, or "".
func configFlag(argv []string) string {
	for i, a := range argv {
		if a == "--" {
			break
		}
		if v, ok := strings.CutPrefix(a, "--config="); ok {
			return v
		}
		if (a == "--config" || a == "-c") && i+1 < len(argv) {
			return argv[i+1]
		}
	}
	return ""
}

// configFromConfigMap writes the file the container sees at configArg to
// a local file and returns its path: it must come from a ConfigMap volume
// mounted as a directory (a subPath mount is never updated by the kubelet,
// so a reload would not see a changed config).
func configFromConfigMap(t *testing.T, pod corev1.PodSpec, c corev1.Container, configArg string, configMaps map[string]*corev1.ConfigMap) string {
	t.Helper()
	var mount *corev1.VolumeMount
	for i, vm := range c.VolumeMounts {
		dir := strings.TrimSuffix(vm.MountPath, "/")
		if strings.HasPrefix(configArg, dir+"/") || configArg == dir {
			if mount == nil || len(vm.MountPath) > len(mount.MountPath) {
				mount = &c.VolumeMounts[i]
			}
		}
	}
	if mount == nil {
		t.Fatalf("--config %s: no volume of container %s is mounted there", configArg, c.Name)
	}
	if mount.SubPath != "" || mount.SubPathExpr != "" {
		t.Errorf("volumeMount %s uses subPath: the kubelet never updates a subPath mount, so a reload would read the old config: mount the ConfigMap as a directory", mount.Name)
	}
	i := slices.IndexFunc(pod.Volumes, func(v corev1.Volume) bool { return v.Name == mount.Name })
	if i < 0 {
		t.Fatalf("volumeMount %s: no such volume", mount.Name)
	}
	src := pod.Volumes[i].ConfigMap
	if src == nil {
		t.Fatalf("--config %s: volume %s is not a ConfigMap", configArg, mount.Name)
	}
	rel := strings.TrimPrefix(configArg, strings.TrimSuffix(mount.MountPath, "/")+"/")
	key := rel
	if len(src.Items) > 0 {
		key = ""
		for _, it := range src.Items {
			if it.Path == rel {
				key = it.Key
			}
		}
		if key == "" {
			t.Fatalf("--config %s: volume %s's items put no key at %s", configArg, mount.Name, rel)
		}
	}
	cm, ok := configMaps[src.Name]
	if !ok {
		t.Fatalf("volume %s: ConfigMap %s is not in deploy/kubernetes", mount.Name, src.Name)
	}
	data, ok := cm.Data[key]
	if !ok {
		t.Fatalf("--config %s: ConfigMap %s has no key %s", configArg, cm.Name, key)
	}
	path := filepath.Join(t.TempDir(), filepath.Base(key))
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// checkProbe checks that probe asks GET path on the container port number
// want.
func checkProbe(t *testing.T, c corev1.Container, name string, probe *corev1.Probe, path string, want int32) {
	t.Helper()
	if probe == nil || probe.HTTPGet == nil {
		t.Errorf("container %s: no %s with httpGet %s", c.Name, name, path)
		return
	}
	g := probe.HTTPGet
	if g.Path != path {
		t.Errorf("%s: path %s, want %s", name, g.Path, path)
	}
	if g.Scheme != "" && g.Scheme != corev1.URISchemeHTTP {
		t.Errorf("%s: scheme %s: the metrics endpoint serves plain HTTP", name, g.Scheme)
	}
	n, ok := resolvePort(c, g.Port)
	switch {
	case !ok:
		t.Errorf("%s: port %s is no port of container %s", name, g.Port.String(), c.Name)
	case n != want:
		t.Errorf("%s: port %s is %d, not the metrics port %d", name, g.Port.String(), n, want)
	}
}

// namedPort is the number of the container's port called name.
func namedPort(c corev1.Container, name string) (int32, bool) {
	for _, p := range c.Ports {
		if p.Name == name {
			return p.ContainerPort, true
		}
	}
	return 0, false
}

// resolvePort turns a port given by name or number into its number.
func resolvePort(c corev1.Container, p intstr.IntOrString) (int32, bool) {
	if p.Type == intstr.String {
		return namedPort(c, p.StrVal)
	}
	return p.IntVal, p.IntVal > 0
}

// tcpBindPorts are the ports of the TCP binds among addrs.
func tcpBindPorts(t *testing.T, addrs []listener.Addr) []int32 {
	t.Helper()
	var ports []int32
	for _, a := range addrs {
		if a.Kind != listener.KindTCP {
			continue
		}
		_, p, err := net.SplitHostPort(a.Address)
		if err != nil {
			t.Fatalf("bind %s: %v", a.Raw, err)
		}
		n, err := strconv.Atoi(p)
		if err != nil {
			t.Fatalf("bind %s: port %q", a.Raw, p)
		}
		ports = append(ports, int32(n))
	}
	return ports
}

// selects reports whether every label of selector is in labels.
func selects(selector, labels map[string]string) bool {
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}
