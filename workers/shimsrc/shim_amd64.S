# The embedded exec shim for linux/amd64: RunShim (workers/shim.go) in a
# few hundred bytes, with no runtime to start (workers/shim_embed.go).
# Built by build.sh into ../shim_amd64.bin; TestEmbeddedShimIsUpToDate
# checks the committed binary against this source.
#
#   argv: SHIM __exec-shim PATH ARGV0 [ARGS...]
#
# 1. When SHIM's last path element is a number (Start runs the shim as
#    /proc/self/fd/K), close fd K so the worker does not inherit it.
# 2. Build the environment: envp, then LISTEN_PID=<pid>, then
#    WATCHDOG_PID=<pid> when WATCHDOG_USEC is set and not empty.
# 3. prctl(PR_SET_PDEATHSIG, SIGKILL) (one thread: it is the one that
#    calls execve).
# 4. execve(PATH, [ARGV0, ARGS...], env).
# On failure: one line on stderr, exit status 127.

	.globl	_start
	.text
_start:
	mov	(%rsp), %r12			# argc
	lea	8(%rsp), %r13			# argv
	lea	16(%rsp,%r12,8), %r14		# envp
	cmp	$4, %r12
	jl	usage

	# 1. fd K from SHIM's last path element.
	mov	(%r13), %rsi
	xor	%edi, %edi			# K
	xor	%ecx, %ecx			# digits seen
	xor	%r8d, %r8d			# a non-digit seen
1:	movzbl	(%rsi), %eax
	inc	%rsi
	test	%eax, %eax
	jz	3f
	cmp	$'/', %eax
	jne	2f
	xor	%edi, %edi
	xor	%ecx, %ecx
	xor	%r8d, %r8d
	jmp	1b
2:	sub	$'0', %eax
	cmp	$9, %eax
	ja	4f
	imul	$10, %edi, %edi
	add	%eax, %edi
	mov	$1, %ecx
	jmp	1b
4:	mov	$1, %r8d
	jmp	1b
3:	test	%r8d, %r8d
	jnz	5f
	test	%ecx, %ecx
	jz	5f
	mov	$3, %eax			# close(K)
	syscall
5:
	# 2. The pid in decimal, into "LISTEN_PID=" and "WATCHDOG_PID=".
	mov	$39, %eax			# getpid
	syscall
	sub	$64, %rsp
	lea	32(%rsp), %rdi			# digits end at 32(%rsp)
	movb	$0, (%rdi)
	mov	$10, %ecx
6:	xor	%edx, %edx
	div	%ecx
	add	$'0', %dl
	dec	%rdi
	mov	%dl, (%rdi)
	test	%eax, %eax
	jnz	6b
	mov	%rdi, %r15			# the digits, NUL-terminated
	sub	$64, %rsp
	mov	%rsp, %rbx			# LISTEN_PID= at (%rbx)
	lea	listen(%rip), %rsi
	mov	%rbx, %rdi
	mov	$11, %ecx
	rep	movsb
	mov	%r15, %rsi
7:	lodsb
	stosb
	test	%al, %al
	jnz	7b
	sub	$64, %rsp
	mov	%rsp, %rbp			# WATCHDOG_PID= at (%rbp)
	lea	watchdog(%rip), %rsi
	mov	%rbp, %rdi
	mov	$13, %ecx
	rep	movsb
	mov	%r15, %rsi
8:	lodsb
	stosb
	test	%al, %al
	jnz	8b

	# Count envp; look for a non-empty WATCHDOG_USEC.
	xor	%r9d, %r9d			# n
	xor	%r10d, %r10d			# WATCHDOG_USEC set
9:	mov	(%r14,%r9,8), %rsi
	test	%rsi, %rsi
	jz	11f
	inc	%r9
	lea	usec(%rip), %rdi
	mov	$14, %ecx
	repe	cmpsb
	jne	9b
	cmpb	$0, (%rsi)
	je	9b
	mov	$1, %r10d
	jmp	9b
11:	# The new envp: n + 3 pointers.
	lea	24(,%r9,8), %rax
	add	$15, %rax
	and	$-16, %rax
	sub	%rax, %rsp
	xor	%ecx, %ecx
12:	cmp	%r9, %rcx
	je	13f
	mov	(%r14,%rcx,8), %rax
	mov	%rax, (%rsp,%rcx,8)
	inc	%rcx
	jmp	12b
13:	mov	%rbx, (%rsp,%rcx,8)
	inc	%rcx
	test	%r10d, %r10d
	jz	14f
	mov	%rbp, (%rsp,%rcx,8)
	inc	%rcx
14:	movq	$0, (%rsp,%rcx,8)
	mov	%rsp, %r14			# the new envp

	# 3. The parent-death signal.
	mov	$157, %eax			# prctl
	mov	$1, %edi			# PR_SET_PDEATHSIG
	mov	$9, %esi			# SIGKILL
	xor	%edx, %edx
	xor	%r10d, %r10d
	xor	%r8d, %r8d
	syscall
	test	%rax, %rax
	jnz	pdeath

	# 4. execve(PATH, argv+3, envp)
	mov	$59, %eax
	mov	16(%r13), %rdi
	lea	24(%r13), %rsi
	mov	%r14, %rdx
	syscall
	neg	%eax				# errno
	mov	%eax, %ebx

	# "supervisor: exec PATH: REASON\n" by writev(2, iov, 5).
	sub	$96, %rsp
	lea	execmsg(%rip), %rax
	mov	%rax, (%rsp)
	movq	$17, 8(%rsp)
	mov	16(%r13), %rdi
	mov	%rdi, 16(%rsp)
	xor	%ecx, %ecx
15:	cmpb	$0, (%rdi,%rcx)
	je	16f
	inc	%rcx
	jmp	15b
16:	mov	%rcx, 24(%rsp)
	lea	colon(%rip), %rax
	mov	%rax, 32(%rsp)
	movq	$2, 40(%rsp)
	# REASON: a known errno's text, else "errno N".
	lea	errnos(%rip), %rsi
17:	movzbl	(%rsi), %eax			# entry: errno, length, text
	test	%eax, %eax
	jz	18f
	movzbl	1(%rsi), %ecx
	cmp	%eax, %ebx
	je	19f
	lea	2(%rsi,%rcx), %rsi
	jmp	17b
19:	lea	2(%rsi), %rax
	mov	%rax, 48(%rsp)
	mov	%rcx, 56(%rsp)
	jmp	20f
18:	lea	95(%rsp), %rdi			# "errno N" in 80..95(%rsp)
	mov	%ebx, %eax
	mov	$10, %ecx
21:	xor	%edx, %edx
	div	%ecx
	add	$'0', %dl
	mov	%dl, (%rdi)
	dec	%rdi
	test	%eax, %eax
	jnz	21b
	sub	$5, %rdi
	movl	$0x6e727265, (%rdi)		# "errn"
	movb	$'o', 4(%rdi)
	movb	$' ', 5(%rdi)
	mov	%rdi, 48(%rsp)
	lea	96(%rsp), %rax
	sub	%rdi, %rax
	mov	%rax, 56(%rsp)
20:	lea	newline(%rip), %rax
	mov	%rax, 64(%rsp)
	movq	$1, 72(%rsp)
	mov	$20, %eax			# writev
	mov	$2, %edi
	mov	%rsp, %rsi
	mov	$5, %edx
	syscall
	jmp	fail

pdeath:	lea	pdeathmsg(%rip), %rsi
	mov	$pdeathlen, %edx
	jmp	say
usage:	lea	usagemsg(%rip), %rsi
	mov	$usagelen, %edx
say:	mov	$1, %eax			# write(2, msg, len)
	mov	$2, %edi
	syscall
fail:	mov	$231, %eax			# exit_group(127)
	mov	$127, %edi
	syscall

listen:	.ascii	"LISTEN_PID="
watchdog: .ascii "WATCHDOG_PID="
usec:	.ascii	"WATCHDOG_USEC="
execmsg: .ascii	"supervisor: exec "
colon:	.ascii	": "
newline: .ascii	"\n"
usagemsg: .ascii "supervisor: exec shim: want PATH ARGV0 [ARGS...]\n"
	.set	usagelen, . - usagemsg
pdeathmsg: .ascii "supervisor: exec shim: set the parent-death signal: failed\n"
	.set	pdeathlen, . - pdeathmsg
# errno, length, text; Go's texts for the errors execve gives.
errnos:
	.byte	2, 25
	.ascii	"no such file or directory"
	.byte	13, 17
	.ascii	"permission denied"
	.byte	8, 17
	.ascii	"exec format error"
	.byte	20, 15
	.ascii	"not a directory"
	.byte	40, 33
	.ascii	"too many levels of symbolic links"
	.byte	26, 14
	.ascii	"text file busy"
	.byte	7, 22
	.ascii	"argument list too long"
	.byte	12, 23
	.ascii	"cannot allocate memory"
	.byte	21, 14
	.ascii	"is a directory"
	.byte	0
