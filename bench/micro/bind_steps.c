// bench/micro.sh: the steps of one file bind as nvhook makes it, in a private mount namespace on a tmpfs.
#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <fcntl.h>
#include <time.h>
#include <sys/stat.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <linux/mount.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1e9+t.tv_nsec;}
int main(int argc,char**argv){
  const char*p=argc>1?argv[1]:"/usr/bin/true"; int N=40;
  struct mount_attr a={.attr_set=MOUNT_ATTR_RDONLY|MOUNT_ATTR_NOSUID|MOUNT_ATTR_NODEV};
  if(unshare(CLONE_NEWNS)){perror("unshare");return 1;}
  mount(NULL,"/",NULL,MS_REC|MS_PRIVATE,NULL);
  char tpl[]="/tmp/nvhook-micro-XXXXXX"; char*root=mkdtemp(tpl); if(!root){perror("mkdtemp");return 1;}
  if(mount("tmpfs",root,"tmpfs",0,NULL)){perror("mount");return 1;}
  int dir=open(root,O_RDONLY|O_DIRECTORY);
  double tc=0,tf=0,tt=0,tm=0,tx=0;
  for(int r=0;r<20;r++){
    char d[32]; sprintf(d,"d%d",r); mkdirat(dir,d,0755); int dd=openat(dir,d,O_RDONLY|O_DIRECTORY);
    for(int i=0;i<N;i++){ char n[32]; sprintf(n,"f%d",i);
      double t0=now(); int f=openat(dd,n,O_WRONLY|O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC,0644);
      double t1=now(); struct stat st; fstat(f,&st);
      double t2=now(); int t=syscall(467,AT_FDCWD,p,OPEN_TREE_CLONE|OPEN_TREE_CLOEXEC,&a,sizeof a);
      double t3=now(); if(syscall(SYS_move_mount,t,"",f,"",MOVE_MOUNT_F_EMPTY_PATH|MOVE_MOUNT_T_EMPTY_PATH)){perror("mm");return 1;}
      double t4=now(); close(f); close(t); double t5=now();
      tc+=t1-t0; tf+=t2-t1; tt+=t3-t2; tm+=t4-t3; tx+=t5-t4; }
    close(dd);
  }
  double n=20.0*N*1e3;
  printf("create %.2f fstat %.2f open_tree_attr %.2f move_mount %.2f close2 %.2f us\n",tc/n,tf/n,tt/n,tm/n,tx/n);
  // count mounts now
  return 0;
}
