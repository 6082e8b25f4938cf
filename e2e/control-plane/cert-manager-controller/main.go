// Command cert-manager-controller runs cert-manager's controllers for the Ballast e2e
// control plane.
//
// Why our own main: cert-manager's own controller entrypoint (cmd/controller) lives in a
// nested Go module that is not published through the module proxy; the root module
// github.com/cert-manager/cert-manager (which is published) contains every controller in
// pkg/controller/... plus the public ContextFactory / registry API. This main wires those
// together: build a ContextFactory from a kubeconfig, construct the enabled registered
// controllers, start the shared informer factories and run the controllers until
// SIGTERM/SIGINT. There is no leader election (single replica; --leader-elect must be false),
// no webhook, and no metrics server unless --metrics-listen-address is set.
package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	logsapi "k8s.io/component-base/logs/api/v1"

	"github.com/cert-manager/cert-manager/pkg/controller"
	dnsutil "github.com/cert-manager/cert-manager/pkg/issuer/acme/dns/util"
	logf "github.com/cert-manager/cert-manager/pkg/logs"
	utilfeature "github.com/cert-manager/cert-manager/pkg/util/feature"

	// Each of these packages registers its controller(s) with controller.Register in init().
	_ "github.com/cert-manager/cert-manager/pkg/controller/acmechallenges"
	_ "github.com/cert-manager/cert-manager/pkg/controller/acmeorders"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificate-shim/gateways"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificate-shim/ingresses"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificate-shim/listenerset"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/acme"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/approver"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/ca"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/selfsigned"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/vault"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/venafi"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/issuing"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/keymanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/metrics"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/readiness"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/requestmanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/revisionmanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/trigger"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificatesigningrequests/acme"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificatesigningrequests/ca"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificatesigningrequests/selfsigned"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificatesigningrequests/vault"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificatesigningrequests/venafi"
	_ "github.com/cert-manager/cert-manager/pkg/controller/clusterissuers"
	_ "github.com/cert-manager/cert-manager/pkg/controller/issuers"

	// Each of these registers an issuer implementation with issuer.RegisterIssuer in init();
	// without them every Issuer stays "not registered" and is never marked Ready.
	_ "github.com/cert-manager/cert-manager/pkg/issuer/acme"
	_ "github.com/cert-manager/cert-manager/pkg/issuer/ca"
	_ "github.com/cert-manager/cert-manager/pkg/issuer/selfsigned"
	_ "github.com/cert-manager/cert-manager/pkg/issuer/vault"
	_ "github.com/cert-manager/cert-manager/pkg/issuer/venafi"
)

// version is set with -ldflags "-X main.version=..." by build.sh (which also sets
// cert-manager's own pkg/util.AppVersion, used in its User-Agent).
var version = "unknown"

// Controllers that need API groups a plain control plane does not have (Gateway API),
// so "*" leaves them out; name them explicitly to enable them.
var offByDefault = map[string]bool{"gateway-shim": true, "listenerset": true}

type options struct {
	kubeconfig, master, namespace, clusterResourceNamespace string
	controllers                                             []string
	leaderElect, enableOwnerRef, showVersion                bool
	qps                                                     float32
	burst, workers, maxConcurrentChallenges                 int
	metricsAddr, http01SolverImage                          string
	minBackoff, maxBackoff, dns01RetryPeriod                time.Duration
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "cert-manager-controller: %v\n", err)
		logf.FlushLogs()
		os.Exit(1)
	}
}

func run() error {
	var o options
	fs := pflag.NewFlagSet("cert-manager-controller", pflag.ContinueOnError)
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "path to a kubeconfig (required unless running in-cluster)")
	fs.StringVar(&o.master, "master", "", "API server address, overrides the kubeconfig")
	fs.StringVar(&o.namespace, "namespace", "", "only watch this namespace (default: all)")
	fs.StringVar(&o.clusterResourceNamespace, "cluster-resource-namespace", "cert-manager", "namespace holding ClusterIssuer secrets")
	fs.StringSliceVar(&o.controllers, "controllers", []string{"*"}, "controllers to run: '*' (all except "+strings.Join(keys(offByDefault), ",")+"), names, or -name to disable")
	fs.BoolVar(&o.leaderElect, "leader-elect", false, "must be false: this build has no leader election")
	fs.BoolVar(&o.enableOwnerRef, "enable-certificate-owner-ref", false, "make Certificates owners of their Secrets")
	fs.Float32Var(&o.qps, "kube-api-qps", 20, "client QPS (ignored when API Priority and Fairness is on)")
	fs.IntVar(&o.burst, "kube-api-burst", 50, "client burst")
	fs.IntVar(&o.workers, "workers", 5, "workers per controller")
	fs.IntVar(&o.maxConcurrentChallenges, "max-concurrent-challenges", 60, "max ACME challenges processed at once")
	fs.StringVar(&o.metricsAddr, "metrics-listen-address", "", "serve Prometheus metrics here (e.g. 127.0.0.1:9402); empty disables")
	fs.StringVar(&o.http01SolverImage, "acme-http01-solver-image", "cert-manager-acmesolver:"+version, "image for ACME HTTP-01 solver pods")
	fs.DurationVar(&o.minBackoff, "certificate-request-minimum-backoff-duration", time.Hour, "minimum re-issue backoff after a failed request")
	fs.DurationVar(&o.maxBackoff, "certificate-request-maximum-backoff-duration", 32*time.Hour, "maximum re-issue backoff")
	fs.DurationVar(&o.dns01RetryPeriod, "dns01-check-retry-period", 10*time.Second, "ACME DNS-01 self-check retry period")
	fs.BoolVar(&o.showVersion, "version", false, "print the version and exit")
	utilfeature.DefaultMutableFeatureGate.AddFlag(fs)
	logOpts := logsapi.NewLoggingConfiguration()
	logf.AddFlags(logOpts, fs)
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil
		}
		return err
	}
	if o.showVersion {
		fmt.Printf("cert-manager-controller %s (cert-manager root module controllers, Ballast e2e main)\n", version)
		return nil
	}
	if o.leaderElect {
		return errors.New("--leader-elect=true is not supported by this build (run a single replica with --leader-elect=false)")
	}
	logf.InitLogs()
	if err := logf.ValidateAndApply(logOpts); err != nil {
		return err
	}
	defer logf.FlushLogs()

	enabled, err := selectControllers(o.controllers)
	if err != nil {
		return err
	}

	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	ctx = logf.NewContext(ctx, logf.Log, "controller")
	log := logf.FromContext(ctx)
	log.Info("starting cert-manager controllers", "version", version, "controllers", enabled)

	factory, err := controller.NewContextFactory(ctx, controller.ContextOptions{
		Kubeconfig:         o.kubeconfig,
		APIServerHost:      o.master,
		KubernetesAPIQPS:   o.qps,
		KubernetesAPIBurst: o.burst,
		Namespace:          o.namespace,
		IssuerOptions: controller.IssuerOptions{
			ClusterResourceNamespace: o.clusterResourceNamespace,
		},
		ACMEOptions: controller.ACMEOptions{
			HTTP01SolverImage:            o.http01SolverImage,
			DNS01Nameservers:             dnsutil.RecursiveNameservers,
			DNS01CheckAuthoritative:      true,
			DNS01CheckRetryPeriod:        o.dns01RetryPeriod,
			ACMEHTTP01SolverRunAsNonRoot: true,
		},
		CertificateOptions: controller.CertificateOptions{
			EnableOwnerRef:                           o.enableOwnerRef,
			CertificateRequestMinimumBackoffDuration: o.minBackoff,
			CertificateRequestMaximumBackoffDuration: o.maxBackoff,
		},
		SchedulerOptions: controller.SchedulerOptions{MaxConcurrentChallenges: o.maxConcurrentChallenges},
	})
	if err != nil {
		return fmt.Errorf("building controller context: %w", err)
	}
	// The informer factories are shared by every Context the factory builds.
	shared, err := factory.Build()
	if err != nil {
		return fmt.Errorf("building controller context: %w", err)
	}

	if o.metricsAddr != "" {
		ln, err := net.Listen("tcp", o.metricsAddr)
		if err != nil {
			return fmt.Errorf("metrics listener: %w", err)
		}
		srv := shared.Metrics.NewServer(ln)
		go func() { _ = srv.Serve(ln) }()
		defer srv.Close()
	}

	type runnable struct {
		name string
		c    controller.Interface
	}
	var ctrls []runnable
	for _, name := range enabled {
		if o.namespace != "" && name == "clusterissuers" {
			log.Info("skipping clusterissuers: scoped to one namespace")
			continue
		}
		c, err := controller.Known()[name](factory)
		if err != nil {
			return fmt.Errorf("constructing controller %q: %w", name, err)
		}
		ctrls = append(ctrls, runnable{name, c})
	}

	// Informers are requested while controllers are constructed; start them afterwards.
	shared.SharedInformerFactory.Start(ctx.Done())
	shared.KubeSharedInformerFactory.Start(ctx.Done())
	shared.HTTP01ResourceMetadataInformersFactory.Start(ctx.Done())
	if shared.GatewaySolverEnabled {
		shared.GWShared.Start(ctx.Done())
	}
	go func() {
		// up.sh waits for this line before declaring cert-manager ready.
		shared.SharedInformerFactory.WaitForCacheSync(ctx.Done())
		shared.KubeSharedInformerFactory.WaitForCacheSync(ctx.Done())
		shared.HTTP01ResourceMetadataInformersFactory.WaitForCacheSync(ctx.Done())
		if ctx.Err() == nil {
			log.Info("informer caches synced; controllers running", "count", len(ctrls))
		}
	}()

	errs := make(chan error, len(ctrls))
	var wg sync.WaitGroup
	for _, r := range ctrls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			log.Info("starting controller", "controller", r.name)
			if err := r.c.Run(o.workers, ctx); err != nil {
				errs <- fmt.Errorf("controller %q: %w", r.name, err)
				cancel()
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	log.Info("controllers stopped")
	return nil
}

func selectControllers(spec []string) ([]string, error) {
	known := controller.Known()
	on := map[string]bool{}
	for _, s := range spec {
		s = strings.TrimSpace(s)
		switch {
		case s == "*":
			for n := range known {
				if !offByDefault[n] {
					on[n] = true
				}
			}
		case strings.HasPrefix(s, "-"):
			n := s[1:]
			if _, ok := known[n]; !ok {
				return nil, fmt.Errorf("unknown controller %q (known: %s)", n, strings.Join(keys(known), ","))
			}
			delete(on, n)
		case s != "":
			if _, ok := known[s]; !ok {
				return nil, fmt.Errorf("unknown controller %q (known: %s)", s, strings.Join(keys(known), ","))
			}
			on[s] = true
		}
	}
	return keys(on), nil
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
