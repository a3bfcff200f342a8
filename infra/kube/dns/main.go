// Command dns is the cluster DNS of the real node (`edgeloop kube up --real-node`): the smallest real thing that
// makes Services resolve in pods. It watches Services through the API server (client-go's informer, the same way
// CoreDNS's kubernetes plugin does) and answers `<service>.<namespace>.svc.<domain>` with the ClusterIP (A);
// names outside the cluster domain are relayed to the host's resolver. No AAAA, SRV, PTR or headless records:
// what EdgeLoop's pods ask for is a Service's address. CoreDNS would be the full thing, but `go install`ing it
// compiles every cloud provider's SDK its plugins pull in; this needs only modules the kubelet already uses.
package main

import (
	"encoding/binary"
	"flag"
	"io"
	"log"
	"net"
	"os"
	"strings"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

type server struct {
	services cache.Indexer
	suffix   string // ".svc.cluster.local."
	upstream string
	ttl      uint32
}

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of an identity that may list and watch Services")
	listen := flag.String("listen", "127.0.0.1:1053", "address to serve DNS on (UDP and TCP)")
	domain := flag.String("domain", "cluster.local", "the cluster domain")
	upstream := flag.String("upstream", "", "resolver for other names (default: the first nameserver of /etc/resolv.conf)")
	ttl := flag.Uint("ttl", 5, "TTL of the answers, in seconds")
	flag.Parse()

	config, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		log.Fatalf("kubeconfig: %v", err)
	}
	client := kubernetes.NewForConfigOrDie(config)
	factory := informers.NewSharedInformerFactory(client, 10*time.Minute)
	informer := factory.Core().V1().Services().Informer()
	stop := make(chan struct{})
	factory.Start(stop)
	if !cache.WaitForCacheSync(stop, informer.HasSynced) {
		log.Fatal("services never synced")
	}
	if *upstream == "" {
		*upstream = firstNameserver()
	}
	s := &server{informer.GetIndexer(), ".svc." + strings.Trim(*domain, ".") + ".", *upstream, uint32(*ttl)}

	udp, err := net.ListenPacket("udp", *listen)
	if err != nil {
		log.Fatalf("listen udp %s: %v", *listen, err)
	}
	tcp, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("listen tcp %s: %v", *listen, err)
	}
	log.Printf("serving %s on %s (udp, tcp); other names to %s", strings.TrimPrefix(s.suffix, "."), *listen, s.upstream)
	go s.serveTCP(tcp)
	buffer := make([]byte, 65535)
	for {
		n, peer, err := udp.ReadFrom(buffer)
		if err != nil {
			continue
		}
		query := append([]byte(nil), buffer[:n]...)
		go func() {
			if reply := s.answer(query, "udp"); reply != nil {
				udp.WriteTo(reply, peer)
			}
		}()
	}
}

func (s *server) serveTCP(listener net.Listener) {
	for {
		conn, err := listener.Accept()
		if err != nil {
			continue
		}
		go func() {
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			var size uint16
			if binary.Read(conn, binary.BigEndian, &size) != nil {
				return
			}
			query := make([]byte, size)
			if _, err := io.ReadFull(conn, query); err != nil {
				return
			}
			if reply := s.answer(query, "tcp"); reply != nil {
				binary.Write(conn, binary.BigEndian, uint16(len(reply)))
				conn.Write(reply)
			}
		}()
	}
}

// answer builds the reply to one query: ours for the cluster domain, the upstream resolver's for the rest.
func (s *server) answer(query []byte, network string) []byte {
	var parser dnsmessage.Parser
	header, err := parser.Start(query)
	if err != nil {
		return nil
	}
	question, err := parser.Question()
	if err != nil {
		return nil
	}
	name := strings.ToLower(question.Name.String())
	if !strings.HasSuffix(name, s.suffix) {
		return s.forward(query, network)
	}
	reply := dnsmessage.Message{
		Header:    dnsmessage.Header{ID: header.ID, Response: true, Authoritative: true, RecursionDesired: header.RecursionDesired},
		Questions: []dnsmessage.Question{question},
	}
	labels := strings.Split(strings.TrimSuffix(name, s.suffix), ".")
	ip := net.IP(nil)
	if len(labels) == 2 {
		if item, found, _ := s.services.GetByKey(labels[1] + "/" + labels[0]); found {
			ip = net.ParseIP(item.(*corev1.Service).Spec.ClusterIP).To4()
		}
	}
	switch {
	case ip == nil:
		reply.Header.RCode = dnsmessage.RCodeNameError
	case question.Type == dnsmessage.TypeA || question.Type == dnsmessage.TypeALL:
		var a dnsmessage.AResource
		copy(a.A[:], ip)
		reply.Answers = []dnsmessage.Resource{{
			Header: dnsmessage.ResourceHeader{Name: question.Name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: s.ttl},
			Body:   &a,
		}}
	}
	packed, err := reply.Pack()
	if err != nil {
		return nil
	}
	return packed
}

func (s *server) forward(query []byte, network string) []byte {
	conn, err := net.DialTimeout(network, s.upstream, 5*time.Second)
	if err != nil {
		return nil
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if network == "tcp" {
		binary.Write(conn, binary.BigEndian, uint16(len(query)))
		conn.Write(query)
		var size uint16
		if binary.Read(conn, binary.BigEndian, &size) != nil {
			return nil
		}
		reply := make([]byte, size)
		if _, err := io.ReadFull(conn, reply); err != nil {
			return nil
		}
		return reply
	}
	conn.Write(query)
	reply := make([]byte, 65535)
	n, err := conn.Read(reply)
	if err != nil {
		return nil
	}
	return reply[:n]
}

func firstNameserver() string {
	config, err := os.ReadFile("/etc/resolv.conf")
	if err == nil {
		for _, line := range strings.Split(string(config), "\n") {
			fields := strings.Fields(line)
			if len(fields) >= 2 && fields[0] == "nameserver" {
				return net.JoinHostPort(fields[1], "53")
			}
		}
	}
	return "127.0.0.1:53"
}
