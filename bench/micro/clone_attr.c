// bench/micro.sh: open_tree + mount_setattr against open_tree_attr (Linux 6.15), per clone of one file.
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <fcntl.h>
#include <time.h>
#include <sys/syscall.h>
#include <linux/mount.h>
#include <stdint.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1e9+t.tv_nsec;}
int main(int argc,char**argv){
  const char*p=argc>1?argv[1]:"/usr/bin/true"; int N=2000; int fds[2000];
  struct mount_attr a={.attr_set=MOUNT_ATTR_RDONLY|MOUNT_ATTR_NOSUID|MOUNT_ATTR_NODEV};
  for(int round=0;round<3;round++){
  double t0=now();
  for(int i=0;i<N;i++){ fds[i]=syscall(SYS_open_tree,AT_FDCWD,p,OPEN_TREE_CLONE|OPEN_TREE_CLOEXEC); if(fds[i]<0){perror("ot");return 1;}
    if(syscall(SYS_mount_setattr,fds[i],"",AT_EMPTY_PATH,&a,sizeof a)){perror("msa");return 1;} }
  double t1=now();
  for(int i=0;i<N;i++) close(fds[i]);
  double t2=now();
  for(int i=0;i<N;i++){ fds[i]=syscall(467,AT_FDCWD,p,OPEN_TREE_CLONE|OPEN_TREE_CLOEXEC,&a,sizeof a); if(fds[i]<0){perror("ota");return 1;} }
  double t3=now();
  for(int i=0;i<N;i++) close(fds[i]);
  double t4=now();
  printf("open_tree+setattr %.2f us each (close %.2f); open_tree_attr %.2f us each (close %.2f)\n",(t1-t0)/N/1e3,(t2-t1)/N/1e3,(t3-t2)/N/1e3,(t4-t3)/N/1e3);
  }
}
