// bench/micro.sh: the cost of reading the /proc files a start reads, and of capget(2).
#define _GNU_SOURCE
#include <stdio.h>
#include <unistd.h>
#include <fcntl.h>
#include <time.h>
#include <sys/syscall.h>
#include <linux/capability.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1e9+t.tv_nsec;}
static double rd(const char*p,int N){char b[16384];double t0=now();for(int i=0;i<N;i++){int f=open(p,O_RDONLY|O_CLOEXEC);while(read(f,b,sizeof b)>0);close(f);}return (now()-t0)/N/1e3;}
int main(){int N=2000;
 printf("status %.2f us\n",rd("/proc/self/status",N));
 printf("uid_map %.2f us\n",rd("/proc/self/uid_map",N));
 printf("stat %.2f us\n",rd("/proc/self/stat",N));
 printf("cgroup %.2f us\n",rd("/proc/self/cgroup",N));
 printf("mountinfo %.2f us\n",rd("/proc/self/mountinfo",N));
 struct __user_cap_header_struct h={_LINUX_CAPABILITY_VERSION_3,0}; struct __user_cap_data_struct d[2];
 double t0=now(); for(int i=0;i<N;i++) syscall(SYS_capget,&h,d); printf("capget %.2f us\n",(now()-t0)/N/1e3);
}
