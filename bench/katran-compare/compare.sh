#!/usr/bin/env bash
# compare.sh: ns per packet of Katran's balancer, xlb's balancer and two floors, all measured the
# same way by one harness (src/harness.c): BPF_PROG_TEST_RUN, REPEAT runs per call, ROUNDS calls,
# best and median of the kernel's mean ns per run, harness pinned to CPU $CPU and inside a kb-*
# network namespace with ctx.ingress_ifindex = the veth there (xlb does a FIB lookup).
#
# Every program is measured behind a tiny wrapper (src/reset.bpf.c) that puts the original packet
# back before each run and tail-calls the program: the kernel does NOT reset the packet between the
# runs of one BPF_PROG_TEST_RUN call, so without it an encapsulating balancer sees its own IPIP
# output from the second run on (run with DIRECT=1 to see the unwrapped numbers and their failed
# checks). The floors go through the same wrapper, so (case - floor) takes its cost out.
#
# Run as root, from an xlb checkout (or with XLB_CHECKOUT set); see README.md.
#   KATRAN_SRC    root of a checkout or `git archive` of facebookincubator/katran; without it only
#                 xlb's cases and the floors run (cargo xtask bench data-path)
#   XLB_CHECKOUT  the xlb checkout to measure (default: the git top level of the current directory);
#                 its `cargo xtask build` is run when target/*/xlbd or xlbadm is missing
#   KC_BUILD      scratch dir for objects, the harness, xlbd's socket, state and log
#                 (default: ${TMPDIR:-/tmp}/katran-compare)
# Missing Debian packages (clang-16 llvm-16 libbpf-dev bpftool libelf-dev zlib1g-dev gcc iproute2)
# are installed with apt-get.
#
# Env: REPEAT (300000) ROUNDS (30: see README.md, "Many calls") CPU (1) PIN_DIR (/sys/fs/bpf/xlbkb) ONLY (harness case filter)
#      RUNS (3: harness runs, each case's best over them) DIRECT=1 (also the unwrapped runs) VERBOSE=1 (hex dumps of the last output packets)
#      KATRAN_2STEP=1 (Katran built the Makefile-bpf way) HOLD_SECS=N (keep the lab up N s)
#      SCALE=0 (skip the scaling runs) LIVE=0 (skip the live-frames run) LIVE_PACKETS (4000000)
#      BATCH (64) SCALE_REALS (4096) SCALE_SERVICES (512) SCHEDULERS=0 (skip the per-scheduler
#      new-flow runs)
set -euo pipefail

here=$(dirname "$(readlink -f "$0")")
REPEAT=${REPEAT:-300000}
ROUNDS=${ROUNDS:-30}
RUNS=${RUNS:-3}
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || { echo "compare.sh: RUNS must be a whole number of at least 1, not '$RUNS'" >&2; exit 2; }
CPU=${CPU:-1}
PIN=${PIN_DIR:-/sys/fs/bpf/xlbkb}
NS=kb-$$
PIN_DECAP=$PIN-decap

die() { echo "compare.sh: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root"

KATRAN_SRC=${KATRAN_SRC:-}
if [ -n "$KATRAN_SRC" ]; then
	[ -f "$KATRAN_SRC/katran/lib/bpf/balancer.bpf.c" ] ||
		die "KATRAN_SRC must be the root of a copy of Katran's source (it holds katran/lib/bpf/balancer.bpf.c);
  get one with: git clone https://github.com/facebookincubator/katran
  (the reference results in README.md used commit 19f08fec), then KATRAN_SRC=/path/to/katran"
	KATRAN_SRC=$(readlink -f "$KATRAN_SRC")
fi

XLB=${XLB_CHECKOUT:-$(git rev-parse --show-toplevel 2>/dev/null || true)}
[ -n "$XLB" ] && [ -f "$XLB/Cargo.toml" ] ||
	die "no xlb checkout: run this from inside one, or set XLB_CHECKOUT=/path/to/xlb"
XLB=$(readlink -f "$XLB")

B=${KC_BUILD:-${TMPDIR:-/tmp}/katran-compare}
mkdir -p "$B"
B=$(readlink -f "$B")
SOCK=$B/xlb.sock
STATE=$B/state.json
CONF=$B/xlb.toml
LOG=$B/xlbd.log

# ---- prerequisites (Debian packages, installed only when missing) ----
MULTIARCH=$(gcc -print-multiarch 2>/dev/null || true)
need=()
command -v clang-16 >/dev/null || need+=(clang-16)
[ -x /usr/lib/llvm-16/bin/llc ] || need+=(llvm-16)
[ -e /usr/include/bpf/libbpf.h ] || need+=(libbpf-dev)
command -v bpftool >/dev/null || need+=(bpftool)
[ -e /usr/include/libelf.h ] || need+=(libelf-dev)
[ -e /usr/include/zlib.h ] || need+=(zlib1g-dev)
command -v gcc >/dev/null || need+=(gcc)
command -v ip >/dev/null || need+=(iproute2)
if [ ${#need[@]} -gt 0 ]; then
	echo "# installing ${need[*]}" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q >&2
	apt-get install -y -q "${need[@]}" >&2
	MULTIARCH=$(gcc -print-multiarch)
fi
ARCH_INC=/usr/include/$MULTIARCH

# ---- build (each step only when its output is missing or older than its source) ----
newer() { [ ! -e "$1" ] || [ -n "$(find "${@:2}" -newer "$1" 2>/dev/null | head -1)" ]; }

for f in floors reset; do
	if newer "$B/$f.bpf.o" "$here/src/$f.bpf.c"; then
		clang-16 -target bpf -O2 -g -I"$ARCH_INC" -c "$here/src/$f.bpf.c" -o "$B/$f.bpf.o"
	fi
done
if newer "$B/harness" "$here/src/harness.c"; then
	gcc -O2 -Wall -Wno-format-truncation -o "$B/harness" "$here/src/harness.c" -lbpf
fi

# Katran: katran/lib/bpf/balancer.bpf.c in the layout of build_bpf_modules_opensource.sh
# (include/ = linux_includes, -I. for "katran/lib/..."), the flags of katran/lib/Makefile-bpf
# (-DDEBUG -D__KERNEL__ -O2 -g, no feature defines: INLINE_DECAP*, GUE_ENCAP, etc. off), compiled
# with -target bpf. The only addition: an empty gnu/stubs-32.h, which glibc's <string.h> asks for
# when the target is not x86_64. A second object differs only by -DMAX_CONN_RATE=2000000000
# (flood limiter off) for the SYN cases. Rebuilt when KATRAN_SRC names another copy.
KATRAN_REV=none
if [ -n "$KATRAN_SRC" ]; then
KB=$B/kbpf
KSRC=$KATRAN_SRC/katran/lib
KOBJ=$KB/bpf/balancer.bpf.o
KOBJ_NF=$KB/bpf/balancer_noflood.bpf.o
[ "${KATRAN_2STEP:-0}" = 1 ] && KOBJ=$KB/bpf/balancer.2step.o KOBJ_NF=$KB/bpf/balancer_noflood.2step.o
if newer "$KOBJ" "$KSRC/bpf" || newer "$KOBJ_NF" "$KSRC/bpf" || [ "$(cat "$KB/source" 2>/dev/null)" != "$KSRC" ]; then
	rm -rf "$KB"
	mkdir -p "$KB/include" "$KB/katran/lib" "$KB/bpf" "$KB/shim/gnu"
	cp -r "$KSRC/bpf" "$KSRC/linux_includes" "$KB/katran/lib/"
	cp "$KSRC"/linux_includes/* "$KB/include/"
	: >"$KB/shim/gnu/stubs-32.h"
	COMMON=(-I"$KB/usr/include" -I"$KB/include" -I"$KB" -DDEBUG -D__KERNEL__ -Wno-unused-value
		-Wno-pointer-sign -Wno-compare-distinct-pointer-types -O2 -g)
	KFLAGS=(-target bpf -I"$KB/shim" -I"$ARCH_INC" "${COMMON[@]}")
	(cd "$KB" && clang-16 "${KFLAGS[@]}" -c katran/lib/bpf/balancer.bpf.c -o bpf/balancer.bpf.o)
	(cd "$KB" && clang-16 "${KFLAGS[@]}" -DMAX_CONN_RATE=2000000000 -c katran/lib/bpf/balancer.bpf.c -o bpf/balancer_noflood.bpf.o)
	# KATRAN_2STEP=1: exactly Makefile-bpf's way instead (host clang -emit-llvm | llc -march=bpf).
	if [ "${KATRAN_2STEP:-0}" = 1 ]; then
		(cd "$KB" && clang-16 "${COMMON[@]}" -emit-llvm -c katran/lib/bpf/balancer.bpf.c -o - |
			/usr/lib/llvm-16/bin/llc -march=bpf -filetype=obj -o bpf/balancer.2step.o)
		(cd "$KB" && clang-16 "${COMMON[@]}" -DMAX_CONN_RATE=2000000000 -emit-llvm -c katran/lib/bpf/balancer.bpf.c -o - |
			/usr/lib/llvm-16/bin/llc -march=bpf -filetype=obj -o bpf/balancer_noflood.2step.o)
	fi
	echo "$KSRC" >"$KB/source"
fi
if top=$(git -C "$KATRAN_SRC" rev-parse --show-toplevel 2>/dev/null) && [ "$(readlink -f "$top")" = "$KATRAN_SRC" ]; then
	KATRAN_REV=$(git -C "$KATRAN_SRC" log -1 --format='%h %cs')
else
	KATRAN_REV=unknown
fi
fi

# xlb: the checkout's own build.
XLBD=$(ls -t "$XLB"/target/*/xlbd 2>/dev/null | head -1 || true)
XLBADM=$(ls -t "$XLB"/target/*/xlbadm 2>/dev/null | head -1 || true)
if [ -z "$XLBD" ] || [ -z "$XLBADM" ]; then
	command -v cargo >/dev/null ||
		die "no xlbd/xlbadm under $XLB/target/*/ and no cargo on PATH: run 'cargo xtask build' there (or use sudo -E)"
	(cd "$XLB" && cargo xtask build)
	XLBD=$(ls -t "$XLB"/target/*/xlbd | head -1)
	XLBADM=$(ls -t "$XLB"/target/*/xlbadm | head -1)
fi

# ---- lab: namespace kb-<pid>, veth kb0 (10.10.0.1/24, fd00:10::1/64) + kb1, xlbd on kb0;
# veth kd0 + kd1 for xlb's decapsulator (only its program sizes are read) ----
XLBD_PID=
cleanup() {
	set +e
	if [ -n "$XLBD_PID" ]; then
		kill -TERM "$XLBD_PID" 2>/dev/null
		for _ in $(seq 50); do kill -0 "$XLBD_PID" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$XLBD_PID" 2>/dev/null
		wait "$XLBD_PID" 2>/dev/null
	fi
	ip netns del "$NS" 2>/dev/null
	rm -rf "$PIN" "$PIN_DECAP" "$SOCK" "$STATE" "$CONF"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Leftovers of an earlier run of this script (our pin dir and files only).
rm -rf "$PIN" "$PIN_DECAP" "$SOCK" "$STATE"
echo "services = []" >"$CONF" # no services from a config file: xlbadm adds them below

ip netns add "$NS"
ip -n "$NS" link set lo up
ip -n "$NS" link add kb0 type veth peer name kb1
ip -n "$NS" link add kd0 type veth peer name kd1
for i in kb0 kb1 kd0 kd1; do
	ip -n "$NS" link set $i up
done
ip -n "$NS" addr add 10.10.0.1/24 dev kb0
ip -n "$NS" addr add fd00:10::1/64 dev kb0 nodad
ip -n "$NS" addr add 10.10.1.1/24 dev kd0
ip netns exec "$NS" sysctl -qw net.ipv4.conf.kb0.forwarding=1 net.ipv4.conf.all.forwarding=1 \
	net.ipv6.conf.all.forwarding=1 net.ipv6.conf.kb0.forwarding=1
# Permanent neighbours for the reals (nothing answers ARP or neighbour solicitations here).
neighbours() {
	ip -n "$NS" neigh replace 10.10.0.21 lladdr 02:00:00:00:01:21 dev kb0 nud permanent
	ip -n "$NS" neigh replace 10.10.0.22 lladdr 02:00:00:00:01:22 dev kb0 nud permanent
	ip -n "$NS" neigh replace fd00:10::21 lladdr 02:00:00:00:01:21 dev kb0 nud permanent
	ip -n "$NS" neigh replace fd00:10::22 lladdr 02:00:00:00:01:22 dev kb0 nud permanent
}
neighbours
IFINDEX=$(ip netns exec "$NS" cat /sys/class/net/kb0/ifindex)
PEER_IFINDEX=$(ip netns exec "$NS" cat /sys/class/net/kb1/ifindex)
VETH_MAC=$(ip netns exec "$NS" cat /sys/class/net/kb0/address)

# nsenter --net (not ip netns exec, which gives xlbd a private mount namespace and bpffs, so
# its pins would be invisible here).
RUST_BACKTRACE=0 nsenter --net="/run/netns/$NS" "$XLBD" --iface kb0 --xdp-mode generic --pin-dir "$PIN" --socket "$SOCK" \
	--state-file "$STATE" --config "$CONF" --metrics-listen off --report-every 0 \
	--detach-on-exit >"$LOG" 2>&1 &
XLBD_PID=$!
for _ in $(seq 100); do
	[ -S "$SOCK" ] && [ -e "$PIN/prog" ] && break
	kill -0 "$XLBD_PID" 2>/dev/null || { echo "xlbd exited:" >&2; head -20 "$LOG" >&2; exit 1; }
	sleep 0.1
done
[ -e "$PIN/prog" ] || { echo "xlbd did not pin its program in $PIN" >&2; head -20 "$LOG" >&2; exit 1; }

adm() { "$XLBADM" --socket "$SOCK" "$@"; }
base_services() {
	adm -R <<-EOF
		-A -t 10.10.0.100:80 -s mh
		-a -t 10.10.0.100:80 -r 10.10.0.21:80 -g -w 1
		-A -t 10.10.0.101:80 -s mh
		-a -t 10.10.0.101:80 -r 10.10.0.22:80 -i -w 1
		-A -t [fd00:10::100]:80 -s mh
		-a -t [fd00:10::100]:80 -r [fd00:10::21]:80 -g -w 1
		-A -t [fd00:10::101]:80 -s mh
		-a -t [fd00:10::101]:80 -r [fd00:10::22]:80 -i -w 1
	EOF
	# The fixed entries again, in case one was missing when xlbd added its real server (xlbd
	# leaves a permanent entry alone, and makes any other one "managed"; nothing answers here).
	neighbours
}
base_services

# xlb's decapsulator on kd0, for its PROG line (verifier and JIT sizes).
DECAP_PROG=
if nsenter --net="/run/netns/$NS" "$XLBD" decap --iface kd0 --xdp-mode generic --pin-dir "$PIN_DECAP" \
	--addr 10.10.1.1 >>"$LOG" 2>&1; then
	# It pins its XDP link (link_<iface>); the harness reads the program from it.
	DECAP_PROG=$(find "$PIN_DECAP" -maxdepth 1 \( -name 'prog*' -o -name 'link*' \) | sort | tail -1)
fi
[ -n "$DECAP_PROG" ] || echo "# xlbd decap did not pin a program in $PIN_DECAP (see $LOG): no PROG line for it" >&2

echo "# $(date -Is) $(uname -r), $(nproc) CPUs; load: $(cut -d' ' -f1-3 /proc/loadavg)"
[ -n "$KATRAN_SRC" ] && echo "# katran: $KATRAN_REV ($(basename "$KOBJ"): clang-16 $([ "${KATRAN_2STEP:-0}" = 1 ] && echo '-emit-llvm | llc -march=bpf' || echo '-target bpf'), Makefile-bpf flags, no feature defines; noflood: -DMAX_CONN_RATE=2000000000; per-CPU LRUs of 262144)"
echo "# xlb: $(git -C "$XLB" log -1 --format='%h %cs') ($XLBD), namespace $NS, kb0 ifindex $IFINDEX mac $VETH_MAC"
echo "# neighbours in $NS: $(ip -n "$NS" neigh show dev kb0 | tr '\n' ';')"
echo "# xlb services:"
adm -L -n | sed 's/^/#   /'
XLB_ID=$(bpftool prog show pinned "$PIN/prog" | sed -n 's/^\([0-9]*\):.*/\1/p')
echo "# bpftool prog show pinned $PIN/prog:"
bpftool prog show pinned "$PIN/prog" | sed 's/^/#   /'
VI=$(bpftool -j prog show id "$XLB_ID" | grep -o '"verified_insns":[0-9]*' || true)
echo "# verified_insns from bpftool -j: ${VI:-not shown by $(bpftool version | head -1)}; the PROG lines below read it from bpf_prog_info"

ARGS=(--floors "$B/floors.bpf.o" --reset "$B/reset.bpf.o")
ARGS+=(--xlb-prog "$PIN/prog" --xlb-pin-dir "$PIN" --netns "/run/netns/$NS" --ifindex "$IFINDEX"
	--veth-mac "$VETH_MAC" --tun-src 10.10.0.1 --tun-dst 10.10.0.22
	--tun-src6 fd00:10::1 --tun-dst6 fd00:10::22
	--repeat "$REPEAT" --rounds "$ROUNDS" --cpu "$CPU")
XARGS=("${ARGS[@]}") # xlb alone: the scaling and live-frames runs
[ "${VERBOSE:-0}" = 1 ] && XARGS+=(-v)
[ -n "$KATRAN_SRC" ] && ARGS+=(--katran "$KOBJ" --katran-noflood "$KOBJ_NF")
[ -n "$DECAP_PROG" ] && ARGS+=(--decap-prog "$DECAP_PROG")
[ -n "${ONLY:-}" ] && ARGS+=(--only "$ONLY")
[ "${DIRECT:-0}" = 1 ] && ARGS+=(--direct)
[ "${VERBOSE:-0}" = 1 ] && ARGS+=(-v)
# RUNS > 1: the harness runs that many times (a new process each: new packet buffers and stack),
# every run's lines are printed, and the summary takes each case's best (and median) over them.
OUT=
for run in $(seq 1 "$RUNS"); do
	[ "$RUNS" = 1 ] || echo "# run $run of $RUNS"
	o=$("$B/harness" "${ARGS[@]}" 2> >(grep -v '^libbpf: elf: skipping' >&2))
	echo "$o"
	OUT+=$o$'\n'
done

# ---- summary: (case - floor) ratios, xlb / Katran ----
echo "$OUT" | awk '
/^RESULT/ { id=$2; split($3,a,"="); b=a[2]+0; split($4,m,"="); md=m[2]+0; okl=($0 ~ / OK \|/)
	if (!(id in best) || b < best[id]) best[id]=b
	if (!(id in med) || md < med[id]) med[id]=md
	if (id in seen) ok[id]=(ok[id] && okl); else { ok[id]=okl; seen[id]=1 } }
END {
	if (!("floor.pass" in best)) exit
	fp=best["floor.pass"]; ft=best["floor.swap_tx"]; fn=best["floor.pass_newflow"]
	printf "\nSUMMARY (best of %s calls%s; ns/packet; net = case - floor; floors: pass %d, swap+TX %d, pass behind the new-flow wrapper %d)\n", "'"$ROUNDS"'", ('"$RUNS"' > 1 ? " in each of '"$RUNS"' runs, best run (median: the lowest run median)" : ""), fp, ft, fn
	printf "%-58s %5s %6s %8s %8s %6s %8s %9s\n", "comparison (best ns)", "xlb", "katran", "xlb-net", "kat-net", "ratio", "ratio/TX", "ratio(med)"
	n=split("ACK hit, DR (xlb) vs IPIP (katran)|ACK hit, IPIP both|SYN same flow (xlb: conntrack hit; katran: CH+LRU update)|SYN new flow every run (both: miss + insert)|non-VIP (XDP_PASS)|IPv6 ACK hit, DR (xlb) vs IP6IP6 (katran)|IPv6 ACK hit, IP6IP6 both", label, "|")
	split("xlb.ack_hit_dr|xlb.ack_hit_tun|xlb.syn_dr|xlb.syn_newflow_dr|xlb.nonvip|xlb.ack_hit_dr6|xlb.ack_hit_tun6", xs, "|")
	split("katran.ack_hit|katran.ack_hit|katran.syn|katran.syn_newflow|katran.nonvip|katran.ack_hit6|katran.ack_hit6", ks, "|")
	for (i=1; i<=n; i++) {
		x=xs[i]; k=ks[i]
		if (!(x in best) || !(k in best)) continue
		f = (i==4) ? fn : fp
		ftx = (i==4) ? fn : ((i==5) ? fp : ft)
		xn=best[x]-f; kn=best[k]-f
		fm = (i==4) ? med["floor.pass_newflow"] : med["floor.pass"]
		printf "%-58s %5d %6d %8d %8d %6.2f %8.2f %9.2f%s\n", label[i], best[x], best[k], xn, kn, (kn>0? xn/kn : 0), ((best[k]-ftx)>0 ? (best[x]-ftx)/(best[k]-ftx) : 0), ((med[k]-fm)>0 ? (med[x]-fm)/(med[k]-fm) : 0), (ok[x]&&ok[k]) ? "" : "  (a check FAILED)"
	}
	if ("xlb.syn_newflow_tun" in best && "katran.syn_newflow" in best)
		printf "%-58s %5d %6d %8d %8d %6.2f %8.2f %9.2f\n", "SYN new flow every run, IPIP both", best["xlb.syn_newflow_tun"], best["katran.syn_newflow"], best["xlb.syn_newflow_tun"]-fn, best["katran.syn_newflow"]-fn, (best["xlb.syn_newflow_tun"]-fn)/(best["katran.syn_newflow"]-fn), (best["xlb.syn_newflow_tun"]-fn)/(best["katran.syn_newflow"]-fn), (med["xlb.syn_newflow_tun"]-med["floor.pass_newflow"])/(med["katran.syn_newflow"]-med["floor.pass_newflow"])
	if (!("katran.ack_hit" in best)) {
		printf "\nxlb alone (no KATRAN_SRC): ns/packet net of the floor, and as a multiple of the MAC-swap + XDP_TX floor program\n"
		split("xlb.ack_hit_dr|xlb.ack_hit_tun|xlb.ack_hit_tun_df|xlb.ack_hit_dr6|xlb.ack_hit_tun6|xlb.syn_dr|xlb.syn_tun|xlb.syn_newflow_dr|xlb.syn_newflow_tun|xlb.nonvip", all, "|")
		for (i=1; i in all; i++) {
			x=all[i]; if (!(x in best)) continue
			f = (x ~ /newflow/) ? fn : fp
			printf "%-24s best %5d  net %5d  x swap_tx %6.2f%s\n", x, best[x], best[x]-f, (ft>0 ? best[x]/ft : 0), ok[x] ? "" : "  (a check FAILED)"
		}
	}
	if ("floor.lru_tx" in best) {
		fl=best["floor.lru_tx"]-fp
		printf "\nphysical floor of a known flow (parse, one LRU lookup with a 40-byte key, swap MACs, XDP_TX): %d ns, net %d", best["floor.lru_tx"], fl
		if ("ref.lru16_tx" in best) printf " (16-byte IPv4 key: net %d)", best["ref.lru16_tx"]-fp
		printf "\n"
		split("xlb.ack_hit_dr|xlb.ack_hit_tun|xlb.ack_hit_dr6|xlb.ack_hit_tun6|katran.ack_hit|katran.ack_hit6", fs, "|")
		for (i=1; i in fs; i++) if ((fs[i] in best) && fl > 0) printf "  %-22s net %4d = %5.2f x the floor\n", fs[i], best[fs[i]]-fp, (best[fs[i]]-fp)/fl
		# Each known-flow case against the floor of its own shape (family, tunnel or not).
		split("xlb.ack_hit_dr floor.lru_tx|xlb.ack_hit_tun floor.lru_ipip_tx|katran.ack_hit floor.lru_ipip_tx|xlb.ack_hit_dr6 floor.lru6_tx|xlb.ack_hit_tun6 floor.lru_ip6ip6_tx|katran.ack_hit6 floor.lru_ip6ip6_tx", ps, "|")
		hdr=0
		for (i=1; i in ps; i++) {
			split(ps[i], pr, " ")
			if (!(pr[1] in best) || !(pr[2] in best) || best[pr[2]] - fp <= 0) continue
			if (!hdr++) printf "each against the floor of its shape (net of XDP_PASS):\n"
			printf "  %-22s net %4d = %5.2f x %s (net %d)\n", pr[1], best[pr[1]]-fp, (best[pr[1]]-fp)/(best[pr[2]]-fp), pr[2], best[pr[2]]-fp
		}
	}
	printf "(net and ratio: xlb/Katran of (case - XDP_PASS floor); ratio/TX: over the swap+XDP_TX floor for forwarded cases;\n ratio(med): the same with medians; the new-flow rows use the new-flow wrapper floor for both)\n"
}'

# ---- schedulers (xlb alone): a new flow every run to 10.10.0.100 under each scheduler ----
# The service is edited (-E) to each scheduler in turn and the new-flow case run again; net of the
# new-flow wrapper's floor, against mh. The wrapper gives each run a new source port and a new
# source address every 32768 runs, so with -p (per host) most runs are a known client's new
# connection: the persistence table's hit. The service is put back to mh afterwards.
want() { [ -z "${ONLY:-}" ] || [[ ",$ONLY," == *",$1"* ]] || [[ ",$ONLY," == *".$1"* ]]; }
if [ "${SCHEDULERS:-1}" = 1 ] && want sched; then
	echo; echo "# schedulers: SYN of a new flow every run, direct routing, one real server (ns/packet, net of the new-flow floor)"
	SCHED_OUT=
	# "X -x": scheduler X with an upper connection threshold on the real server that the runs
	# never reach (every new flow reads and counts it; no server is passed by).
	for sched in "mh" "rr" "wrr" "lc" "wlc" "sed" "nq" "fo" "ovf" "sh" "sh -b sh-port" "dh" "mh -p 300" "rr -p 300" "wrr -p 300 -M 255.255.255.0" "mh -x" "rr -x" "wlc -x" "ovf -x"; do
		thr=0
		case "$sched" in *" -x") thr=2000000000; sched=${sched% -x} ;; esac
		# shellcheck disable=SC2086 # the scheduler's options are words
		adm -E -t 10.10.0.100:80 -s $sched
		adm -e -t 10.10.0.100:80 -r 10.10.0.21:80 -g -w 1 -x "$thr"
		[ "$thr" = 0 ] || sched="$sched -x $thr"
		o=$("$B/harness" "${XARGS[@]}" --only floor.pass_newflow,xlb.syn_newflow_dr 2> >(grep -v '^libbpf: elf: skipping' >&2) | grep '^RESULT')
		SCHED_OUT+=$(echo "$o" | sed "s/^RESULT \([^ ]*\)/RESULT \1 sched=${sched// /_}/")$'\n'
	done
	adm -E -t 10.10.0.100:80 -s mh
	adm -e -t 10.10.0.100:80 -r 10.10.0.21:80 -g -w 1 -x 0
	echo "$SCHED_OUT" | awk '
/^RESULT floor.pass_newflow/ { split($3,s,"="); f=s[2]; split($4,a,"="); fb=a[2]+0 }
/^RESULT xlb.syn_newflow_dr/ { split($3,s,"="); name=s[2]; gsub("_"," ",name); split($4,a,"="); b=a[2]+0; split($5,m,"="); md=m[2]+0
	ok=($0 ~ / OK \|/); net=b-fb; if (name=="mh") mhnet=net
	printf "SCHED %-28s best %4d  net %4d  /mh %5.2f%s\n", name, b, net, (mhnet>0?net/mhnet:0), ok?"":"  (a check FAILED)" }'
fi

# ---- scaling (xlb alone): the known flow by DR with many reals, many services, a full table ----
# Each step is one harness call (the XDP_PASS floor, then the known-flow DR case to the step's
# VIP); ratios to the first step. Limits are what this xlbd accepts (xlbadm -R is all or nothing,
# so each step tries smaller counts until one is accepted, and says what it got).
SOUT=
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
scale_run() { # NAME VIP [--fill-conntrack]
	local o
	o=$("$B/harness" "${XARGS[@]}" --scale "$1" --scale-dst "$2" "${@:3}" 2> >(grep -v '^libbpf: elf: skipping' >&2) | grep -v '^PROG\|^# repeat')
	echo "$o"
	SOUT+=$o$'\n'
}
if [ "${SCALE:-1}" = 1 ] && want scale; then
	echo; echo "# scaling: known flow, direct routing; each step after the lab's services ($(adm -L -n | grep -c '^TCP') services, 4 reals)"
	scale_run base 10.10.0.100
	# Capacity, from the daemon's map sizes (real ids are 1..max_entries-1).
	map_max() { bpftool map show pinned "$PIN/$1" | sed -n 's/.*max_entries \([0-9]*\).*/\1/p'; }
	rmax=$(($(map_max XLB_REALS) - 1))
	smax=$(map_max XLB_SERVICES)
	echo "# this xlbd holds at most $rmax real servers and $smax services (its XLB_REALS and XLB_SERVICES)"
	# Many reals in one service, alone (the lab's services cleared, put back after):
	# 10.10.0.102:80, reals 10.11.16.0 + i (on link: 10.11.0.1/16 on kb0), every one with the same
	# permanent neighbour entry.
	ip -n "$NS" addr add 10.11.0.1/16 dev kb0
	want_reals=${SCALE_REALS:-4096}
	[ "$want_reals" -le "$rmax" ] || want_reals=$rmax
	adm -C
	got=
	for n in "$want_reals" 1024; do
		t0=$(date +%s.%N)
		if { echo "-A -t 10.10.0.102:80 -s mh"
			for ((i = 0; i < n; i++)); do echo "-a -t 10.10.0.102:80 -r 10.11.$((16 + i / 256)).$((i % 256)):80 -g -w 1"; done
		} | timeout "${SCALE_ADM_SECS:-300}" "$XLBADM" --socket "$SOCK" -R >/dev/null 2>"$B/adm.err"; then
			got=$n
			echo "# xlbadm -R: 1 service, $n reals in $(since "$t0") s"
			break
		fi
		echo "# xlbadm -R of $n reals refused or over ${SCALE_ADM_SECS:-300} s: $(tail -1 "$B/adm.err")"
		adm -C
	done
	if [ -n "$got" ]; then
		for ((i = 0; i < got; i++)); do echo "neigh replace 10.11.$((16 + i / 256)).$((i % 256)) lladdr 02:00:00:00:01:21 dev kb0 nud permanent"; done |
			ip -n "$NS" -batch -
		scale_run "reals$got" 10.10.0.102
	fi
	t0=$(date +%s.%N)
	adm -C
	echo "# xlbadm -C (1 service, $got reals) in $(since "$t0") s"
	base_services
	# Many services: VIPs 10.12.x.y:80, one real each (10.10.0.21, DR), up to SCALE_SERVICES in all.
	have=$(adm -L -n | grep -c '^TCP')
	got=
	want_services=${SCALE_SERVICES:-512}
	[ "$want_services" -le "$smax" ] || want_services=$smax
	for n in "$want_services" 64; do
		add=$((n - have))
		[ "$add" -gt 0 ] || continue
		t0=$(date +%s.%N)
		if for ((i = 0; i < add; i++)); do
			echo "-A -t 10.12.$((i / 200)).$((i % 200 + 1)):80 -s mh"
			echo "-a -t 10.12.$((i / 200)).$((i % 200 + 1)):80 -r 10.10.0.21:80 -g -w 1"
		done | timeout "${SCALE_ADM_SECS:-300}" "$XLBADM" --socket "$SOCK" -R >/dev/null 2>"$B/adm.err"; then
			got=$n
			echo "# xlbadm -R: $add services in $(since "$t0") s"
			break
		fi
		echo "# xlbadm -R of $add services (to $n in all) refused or over ${SCALE_ADM_SECS:-300} s: $(tail -1 "$B/adm.err")"
	done
	if [ -n "$got" ]; then
		neighbours
		scale_run "services$(adm -L -n | grep -c '^TCP')" 10.10.0.100
		for ((i = 0; i < got - have; i++)); do echo "-D -t 10.12.$((i / 200)).$((i % 200 + 1)):80"; done | adm -R >/dev/null
	fi
	# A full connection table: SYNs of new flows to 10.10.0.100 (the new-flow wrapper) until it
	# has taken 2 x its capacity in inserts (from every CPU), then the known flow again.
	scale_run conntrack_full 10.10.0.100 --fill-conntrack
	echo "$SOUT" | awk '
/^RESULT floor.pass/ { fp=$3; sub("best=","",fp); fm=$4; sub("median=","",fm) }
/^RESULT xlb.scale/ { id=$2; sub("xlb.scale.","",id); b=$3; sub("best=","",b); m=$4; sub("median=","",m)
	ok=($0 ~ / OK \|/); if (id=="base") { bb=b; bm=m; bn=b-fp; bnm=m-fm }
	if (bb>0) printf "SCALE %-18s best %4d median %4d  /base: best %.2f median %.2f  net of floor /base: best %.2f median %.2f%s\n", id, b, m, b/bb, m/bm, (bn>0?(b-fp)/bn:0), (bnm>0?(m-fm)/bnm:0), ok?"":"  (a check FAILED)" }'
fi

# ---- live frames (xlb alone): packets per second out of kb0 to kb1, xlb by DR vs MAC swap ----
if [ "${LIVE:-1}" = 1 ] && want live; then
	echo
	# A kernel (or a VM's) refusal of live frames (seen: EPERM on a Firecracker guest) costs
	# only this run: the figures above stand, unless live frames were all that was asked.
	if ! "$B/harness" "${XARGS[@]}" --live --live-peer-ifindex "$PEER_IFINDEX" --live-packets "${LIVE_PACKETS:-4000000}" \
		--batch "${BATCH:-64}" 2> >(grep -v '^libbpf: elf: skipping' >&2) | grep -v '^PROG\|^# repeat'; then
		[ "${ONLY:-}" = live ] && die "live frames could not be measured on this machine (the harness's error above)"
		echo "# live frames: not measured on this machine (the harness's error above); the other figures stand"
	fi
fi

if [ -n "${HOLD_SECS:-}" ]; then echo "# holding the lab ($NS, $PIN) for $HOLD_SECS s"; sleep "$HOLD_SECS"; fi
echo "# xlbd log tail:"; tail -5 "$LOG" | sed 's/^/#   /'
